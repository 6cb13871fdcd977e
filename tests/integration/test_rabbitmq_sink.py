"""RabbitmqSink against a real RabbitMQ: events out to an existing exchange, confirmed before
202; routing key templates; structured mode; the exchange missing; unroutable events."""

from __future__ import annotations

import json

import aio_pika
import aiohttp
import pytest

from tests.support.mesh import AMQP_URL
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def sink_manifest(name: str, exchange: str, extra: str = "") -> str:
    return f"""
        apiVersion: sinks.rabbitmesh.dev/v1alpha1
        kind: RabbitmqSink
        metadata: {{name: {name}}}
        spec:
          exchangeName: {exchange}
          {extra}
        """


async def declare(exchange: str, queue: str, key: str = "#") -> None:
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        x = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(queue, durable=True)
        await q.bind(x, key)


async def take(queue: str, count: int, url: str = AMQP_URL) -> list[aio_pika.IncomingMessage]:
    conn = await aio_pika.connect(url)
    got: list[aio_pika.IncomingMessage] = []
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)

        async def one() -> bool:
            m = await q.get(no_ack=True, fail=False)
            if m is not None:
                got.append(m)
            return len(got) >= count

        await eventually(one, what=f"{count} messages in {queue}")
    return got


async def post(url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(url, headers=headers, data=body) as r:
        return r.status, await r.text()


def ce(id_: str, type_: str = "com.example.order", **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": id_,
        "ce-type": type_,
        "ce-source": "/test",
        "content-type": "application/json",
        **{f"ce-{k}": v for k, v in extra.items()},
    }


async def test_events_are_published_confirmed_with_the_templated_routing_key(
    start_mesh, app_prefix
):
    exchange, queue = f"{app_prefix}.app", f"{app_prefix}.app-in"
    await declare(exchange, queue, "orders.*")
    mesh = await start_mesh(
        sink_manifest("out", exchange, 'routingKey: "orders.{subject}"')
        + "---"
        + sink_manifest(
            "json", exchange, 'routingKey: "orders.json"\n          contentMode: structured'
        ).replace("name: json", "name: json-out")
    )
    res = mesh.server.ctx.get("RabbitmqSink", "default", "out")
    assert res.status.ready == "True"
    assert res.status.address.url.endswith(f":{mesh.port}/rabbitmqsinks/default/out")
    url = f"{mesh.url}/rabbitmqsinks/default/out"
    status, _ = await post(url, ce("e1", subject="created", team="blue"), b'{"n": 1}')
    assert status == 202
    status, text = await post(url, ce("e2"), b"{}")
    assert status == 400 and "'subject'" in text  # the routing key needs it
    status, text = await post(url, ce("e3", subject="nobody.listens"), b"{}")
    assert status == 503 and "no queue" in text  # would be dropped: refused instead
    json_url = f"{mesh.url}/rabbitmqsinks/default/json-out"
    status, _ = await post(json_url, ce("e4"), b'{"n": 4}')
    assert status == 202
    got = await take(queue, 2)
    binary, structured = got
    assert binary.routing_key == "orders.created"
    assert binary.headers["ce-id"] == "e1"
    assert binary.headers["ce-team"] == "blue"
    assert binary.content_type == "application/json"
    assert binary.message_id == "e1"
    assert binary.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert json.loads(binary.body) == {"n": 1}
    assert structured.routing_key == "orders.json"
    assert structured.content_type.startswith("application/cloudevents+json")
    doc = json.loads(structured.body)
    assert doc["id"] == "e4" and doc["data"] == {"n": 4}


async def test_a_missing_exchange_is_not_ready_and_never_declared(start_mesh, app_prefix):
    exchange = f"{app_prefix}.later"
    mesh = await start_mesh(sink_manifest("later", exchange))
    res = mesh.server.ctx.get("RabbitmqSink", "default", "later")
    assert res.status.ready == "False"
    cond = next(c for c in res.status.conditions if c.type == "Ready")
    assert cond.reason == "ExchangeNotFound"
    status, text = await post(f"{mesh.url}/rabbitmqsinks/default/later", ce("x"), b"{}")
    assert status == 503 and "ExchangeNotFound" in text
    from tests.support.rabbit import list_names

    assert list_names("exchanges", exchange) == []


async def test_an_exchange_deleted_under_the_sink_gives_503_and_brokers_are_untouched(
    start_mesh, app_prefix
):
    exchange, queue = f"{app_prefix}.gone", f"{app_prefix}.gone-q"
    await declare(exchange, queue)
    mesh = await start_mesh(
        sink_manifest("gone", exchange)
        + """
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: default}
        """
    )
    url = f"{mesh.url}/rabbitmqsinks/default/gone"
    assert (await post(url, ce("before"), b"{}"))[0] == 202
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        await ch.exchange_delete(exchange)
    status, text = await post(url, ce("during"), b"{}")
    assert status == 503, text  # not accepted, so the sender keeps it
    # The brokers' shared publisher never saw the channel error.
    assert (await post(f"{mesh.url}/default/default", ce("broker"), b"{}"))[0] == 202
    await declare(exchange, queue)

    async def accepted() -> bool:
        return (await post(url, ce("after"), b"{}"))[0] == 202

    await eventually(accepted, timeout=20, what="the sink publishing again")
    got = await take(queue, 2)
    assert [m.headers["ce-id"] for m in got] == ["before", "after"]
