"""The HTTP ingress without RabbitMQ: Ingress._handle behind a real aiohttp server, publishing
through a stub publisher (tests/support/stubs.py). tests/integration/test_ingress.py runs the
same paths against a real RabbitMQ; here each answer is pinned down in milliseconds,
including the ones a real broker makes hard to stage (a confirm held back, an alarm)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rabbitmesh.amqp.client import BLOCKED_MESSAGE, PublishFailed
from rabbitmesh.dataplane import Target
from rabbitmesh.ingress.handlers import Ingress
from tests.support.events import binary_headers
from tests.support.stubs import StubPublisher

BROKER = Target("t.broker.default.br", is_broker=True)
CHANNEL = Target("t.channel.default.ch", is_broker=False)


class Mesh:
    def __init__(self) -> None:
        self.publisher = StubPublisher()
        self.ready = True
        self.targets = {("Broker", "br"): BROKER, ("Channel", "ch"): CHANNEL}
        self.not_ready: dict[tuple[str, str], str] = {}
        self.ingress = Ingress(
            self.publisher,
            lambda kind, _ns, name: self.targets.get((kind, name)),
            lambda: self.ready,
            max_event_bytes=64 * 1024,
            retry_after=3,
            max_inflight=2,
            not_ready=lambda kind, _ns, name: self.not_ready.get((kind, name)),
        )
        self.client: TestClient[web.Request, web.Application] | None = None

    async def post(
        self, path: str, body: bytes = b"{}", **headers: str
    ) -> tuple[int, dict[str, str], dict[str, str]]:
        assert self.client is not None
        h = {**binary_headers(id_="e1"), **headers}
        async with self.client.post(path, data=body, headers=h) as r:
            text = await r.read()
            return r.status, dict(r.headers), orjson.loads(text) if text else {}


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    m = Mesh()
    app = web.Application()
    app.add_routes(m.ingress.routes())
    async with TestClient(TestServer(app)) as client:
        m.client = client
        yield m


async def test_broker_event_is_stamped_and_published_by_type_then_202(mesh: Mesh) -> None:
    status, _, _ = await mesh.post("/default/br", **{"ce-knativebrokerttl": "9"})
    assert status == 202
    (published,) = mesh.publisher.to(BROKER.exchange)
    attrs = published.event().attributes
    assert published.routing_key == "com.example.test"
    assert attrs["knativebrokerttl"] == 8 and "knativearrivaltime" in attrs


async def test_channel_event_is_published_as_it_came(mesh: Mesh) -> None:
    status, _, _ = await mesh.post("/channels/default/ch", **{"ce-knativebrokerttl": "1"})
    assert status == 202
    attrs = mesh.publisher.to(CHANNEL.exchange)[0].event().attributes
    assert attrs["knativebrokerttl"] == "1" and "knativearrivaltime" not in attrs


async def test_exhausted_ttl_is_400_naming_the_attribute(mesh: Mesh) -> None:
    status, _, body = await mesh.post("/default/br", **{"ce-knativebrokerttl": "1"})
    assert status == 400 and "knativebrokerttl" in body["error"]
    assert mesh.publisher.published == []


async def test_unknown_not_ready_and_starting_up(mesh: Mesh) -> None:
    assert (await mesh.post("/default/nope"))[0] == 404
    mesh.not_ready[("Broker", "nope")] = "Broker default/nope exists but is not Ready (x)"
    status, headers, body = await mesh.post("/default/nope")
    assert status == 503 and headers["Retry-After"] == "3" and "not Ready" in body["error"]
    mesh.ready = False
    status, _, body = await mesh.post("/default/other")
    assert status == 503 and "starting up" in body["error"]


async def test_rabbitmq_down_or_blocking_is_503_and_nothing_is_published(mesh: Mesh) -> None:
    mesh.publisher.connected = False
    status, headers, body = await mesh.post("/default/br")
    assert status == 503 and headers["Retry-After"] == "3"
    mesh.publisher.connected, mesh.publisher.blocked = True, True
    status, _, body = await mesh.post("/default/br")
    assert status == 503 and body["error"] == BLOCKED_MESSAGE
    assert mesh.publisher.published == []


async def test_unconfirmed_publish_is_503_never_202(mesh: Mesh) -> None:
    mesh.publisher.fail(BROKER.exchange, PublishFailed("publish not confirmed in time"))
    status, headers, body = await mesh.post("/default/br")
    assert status == 503 and "event not accepted" in body["error"]
    assert headers["Retry-After"] == "3"


async def test_inflight_limit_refuses_at_once_while_confirms_are_outstanding(
    mesh: Mesh,
) -> None:
    mesh.publisher.hold()
    held = [asyncio.create_task(mesh.post("/default/br")) for _ in range(2)]
    await mesh.publisher.wait_held(2)  # both reached the (stub) broker, confirms held back
    status, headers, body = await mesh.post("/default/br")
    assert status == 503 and "limit 2" in body["error"] and headers["Retry-After"] == "3"
    mesh.publisher.release()
    assert [(await t)[0] for t in held] == [202, 202]
    assert (await mesh.post("/default/br"))[0] == 202  # room again
    assert mesh.ingress.inflight == 0


async def test_batch_is_all_or_nothing(mesh: Mesh) -> None:
    good = {"specversion": "1.0", "id": "1", "source": "s", "type": "t"}
    bad = {"specversion": "1.0", "id": "", "source": "s", "type": "t"}
    status, _, body = await mesh.post(
        "/default/br",
        orjson.dumps([good, bad]),
        **{"Content-Type": "application/cloudevents-batch+json"},
    )
    assert status == 400 and "id" in body["error"]
    assert mesh.publisher.published == []


async def test_methods_other_than_post(mesh: Mesh) -> None:
    assert mesh.client is not None
    async with mesh.client.options("/default/br") as r:
        assert r.status == 200 and r.headers["Allow"] == "POST, OPTIONS"
    async with mesh.client.get("/default/br") as r:
        assert r.status == 405
