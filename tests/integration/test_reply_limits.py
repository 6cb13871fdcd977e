"""A subscriber's response is read with a limit (RABBITMESH_MAX_EVENT_BYTES): a huge reply was
read whole at every attempt (RSS 110 MB -> 2.3 GB for 300 MiB), and publishing it closed the
shared publish channel (PRECONDITION_FAILED) so the event was redelivered for ever. Real
RabbitMQ, real `rabbitmesh run` (in-process), a real streaming HTTP subscriber."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web

from tests.integration.test_delivery import broker_and_trigger
from tests.integration.test_poison import ONLY_REQUESTS, REQUEST, delivery
from tests.support.events import post_binary

pytestmark = pytest.mark.integration

MIB = 1 << 20


class StreamingSubscriber:
    """Answers every request with `mib` MiB streamed in 1 MiB chunks; counts what it got out
    before the reader hung up."""

    def __init__(self, mib: int, status: int = 200, event: bool = True) -> None:
        self.mib, self.status, self.event = mib, status, event
        self.hits = 0
        self.written: list[int] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.hits += 1
        headers = {"Content-Type": "application/octet-stream"}
        if self.event:
            headers |= {
                "ce-id": f"r{self.hits}",
                "ce-specversion": "1.0",
                "ce-type": "huge.reply",
                "ce-source": "evil",
            }
        resp = web.StreamResponse(status=self.status, headers=headers)
        await resp.prepare(request)
        written = 0
        try:
            for _ in range(self.mib):
                await resp.write(b"x" * MIB)
                written += MIB
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the reader hung up: what the limit is for
        finally:
            self.written.append(written)
        return resp

    async def start(self) -> StreamingSubscriber:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def streaming():
    subs: list[StreamingSubscriber] = []

    async def make(*args: object, **kwargs: object) -> StreamingSubscriber:
        s = await StreamingSubscriber(*args, **kwargs).start()  # type: ignore[arg-type]
        subs.append(s)
        return s

    yield make
    for s in subs:
        await s.stop()


async def test_huge_reply_is_a_failed_delivery_never_read_whole(start_mesh, make_sink, streaming):
    """64 MiB is under RabbitMQ's 128 MiB limit: before, it was read whole and published as
    the reply. With RABBITMESH_MAX_EVENT_BYTES of 1 MiB it is a failed delivery: retried per
    the policy, then dead-lettered with a knativeerrordata that says why, and the subscriber
    is cut off near the limit at each attempt."""
    sub = await streaming(64)
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(sub.url, delivery(dls.url, 1), ONLY_REQUESTS),
        max_event_bytes=MIB,
    )
    status, eid = await post_binary(mesh.url + "/default/br", REQUEST)
    assert status == 202
    (dead,) = await dls.wait_for(1, timeout=30)
    assert dead.headers["ce-id"] == eid
    assert dead.headers["ce-knativeerrorcode"] == "502"
    why = base64.b64decode(dead.headers["ce-knativeerrordata"]).decode()
    assert "reply too large" in why and str(MIB) in why
    assert sub.hits == 2  # 1 attempt + 1 retry
    assert len(sub.written) == 2 and max(sub.written) < 32 * MIB, sub.written
    assert mesh.server.publisher.connected


async def test_huge_error_body_is_cut_to_the_limit(start_mesh, make_sink, streaming):
    """A 500 with a 64 MiB body: its error data is read up to the limit, never whole."""
    sub = await streaming(64, status=500, event=False)
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(sub.url, delivery(dls.url, 0), ONLY_REQUESTS),
        max_event_bytes=MIB,
    )
    status, eid = await post_binary(mesh.url + "/default/br", REQUEST)
    assert status == 202
    (dead,) = await dls.wait_for(1, timeout=30)
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert len(sub.written) == 1 and sub.written[0] < 32 * MIB, sub.written


async def test_reply_over_max_message_bytes_never_reaches_the_shared_channel(
    start_mesh, make_sink, streaming
):
    """A reply RabbitMQ would refuse for size (over its max_message_size, here configured as
    RABBITMESH_MAX_MESSAGE_BYTES=1 MiB) closed the shared publish channel (PRECONDITION_FAILED),
    failing everyone's publishes. It is refused before sending: a failed delivery."""
    sub = await streaming(2)
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(sub.url, delivery(dls.url, 0), ONLY_REQUESTS),
        max_event_bytes=4 * MIB,
        max_message_bytes=MIB,
    )
    publisher = mesh.server.publisher
    channel = await publisher._publish_channel.get_underlay_channel()
    status, eid = await post_binary(mesh.url + "/default/br", REQUEST)
    assert status == 202
    (dead,) = await dls.wait_for(1, timeout=30)
    assert dead.headers["ce-id"] == eid
    why = base64.b64decode(dead.headers["ce-knativeerrordata"]).decode()
    assert "RABBITMESH_MAX_MESSAGE_BYTES" in why, why
    # The shared channel is the one it was: never closed by RabbitMQ.
    assert not channel.is_closed
    assert await publisher._publish_channel.get_underlay_channel() is channel
