"""RabbitmqSource against a real RabbitMQ: plain AMQP messages in, CloudEvents out; CloudEvents
pass through; ack only after the sink took the event; parallelism; another RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aio_pika
import pytest

from tests.support.mesh import AMQP_URL
from tests.support.rabbit import queue_depth
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def source_manifest(
    name: str, queue: str, sink: str, *, exchange: str | None = None, extra: str = ""
) -> str:
    exchange_line = f"exchangeName: {exchange}" if exchange else ""
    return f"""
        apiVersion: sources.knative.dev/v1alpha1
        kind: RabbitmqSource
        metadata: {{name: {name}}}
        spec:
          rabbitmqClusterReference: {{name: rabbitmq}}
          rabbitmqResourcesConfig:
            {exchange_line}
            queueName: {queue}
            parallelism: 1
          delivery: {{retry: 20, backoffPolicy: linear, backoffDelay: PT0.1S}}
          ceOverrides: {{extensions: {{team: blue}}}}
          sink: {{uri: "{sink}"}}
        {extra}
        """


async def consuming(mesh, name: str, ns: str = "default") -> None:
    def check() -> bool:
        status = mesh.server.ctx.get("RabbitmqSource", ns, name).status
        return status.ready == "True" and "queue" in (status.model_extra or {})

    await eventually(check, timeout=20, what=f"RabbitmqSource {name} consuming")


async def publish(exchange: str, key: str, message: aio_pika.Message, url: str = AMQP_URL) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        x = await ch.get_exchange(exchange) if exchange else ch.default_exchange
        await x.publish(message, routing_key=key)


async def test_plain_messages_become_rabbitmq_events_and_cloudevents_pass_through(
    start_mesh, make_sink, app_prefix
):
    sink = await make_sink()
    queue, exchange = f"{app_prefix}.orders-in", f"{app_prefix}.legacy"
    mesh = await start_mesh(source_manifest("legacy", queue, sink.url, exchange=exchange))
    await consuming(mesh, "legacy")
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await publish(
        exchange,
        "orders.created",
        aio_pika.Message(
            b'{"order": 1}',
            content_type="application/json",
            message_id="m-1",
            correlation_id="c-9",
            timestamp=stamp,
            headers={"X-Order-Id": "A17", "attempts": 3, "nested": {"a": 1}},
        ),
    )
    await publish(
        exchange,
        "any",
        aio_pika.Message(
            b"hello",
            content_type="text/plain",
            message_id="ce-1",
            headers={
                "ce-specversion": "1.0",
                "ce-id": "ce-1",
                "ce-type": "com.example.native",
                "ce-source": "/apps/legacy",
                "ce-subject": "s1",
            },
        ),
    )
    got = await sink.wait_for(2)
    plain, native = got[0].headers, got[1].headers
    assert plain["ce-type"] == "dev.knative.rabbitmq.event"
    assert plain["ce-source"] == f"/apis/v1/namespaces/default/rabbitmqsources/legacy#{queue}"
    assert plain["ce-id"] == "m-1"
    assert plain["ce-time"] == "2026-01-02T03:04:05Z"
    assert plain["content-type"] == "application/json"
    assert json.loads(got[0].body) == {"order": 1}
    assert plain["ce-rabbitmqroutingkey"] == "orders.created"
    assert plain["ce-rabbitmqexchange"] == exchange
    assert plain["ce-rabbitmqcorrelationid"] == "c-9"
    assert plain["ce-rabbitmqxorderid"] == "A17"
    assert plain["ce-rabbitmqattempts"] == "3"
    assert "ce-rabbitmqnested" not in plain  # a table is no CloudEvents value
    assert plain["ce-team"] == "blue"
    # A CloudEvent in the AMQP binding arrives as it was sent (plus ceOverrides).
    assert native["ce-type"] == "com.example.native"
    assert native["ce-source"] == "/apps/legacy"
    assert native["ce-id"] == "ce-1"
    assert native["ce-subject"] == "s1"
    assert native["ce-team"] == "blue"
    assert "ce-rabbitmqroutingkey" not in native
    assert got[1].body == b"hello"
    src = mesh.server.ctx.get("RabbitmqSource", "default", "legacy")
    assert src.status.model_extra["ceAttributes"] == [
        {
            "type": "dev.knative.rabbitmq.event",
            "source": f"/apis/v1/namespaces/default/rabbitmqsources/legacy#{queue}",
        }
    ]
    assert await queue_depth(queue) == 0


async def test_a_message_is_acked_only_after_the_sink_took_it(start_mesh, make_sink, app_prefix):
    down = {"on": True}
    sink = await make_sink(lambda _r, _i: Reply(503) if down["on"] else Reply(202))
    queue = f"{app_prefix}.q"
    mesh = await start_mesh(source_manifest("acks", queue, sink.url))
    await consuming(mesh, "acks")
    await publish("", queue, aio_pika.Message(b"x", message_id="held"))
    await sink.wait_for(2)  # failing, retried
    # Still in RabbitMQ, delivered and unacked, while the sink fails.
    assert _unacked(queue) == 1
    assert await queue_depth(queue) == 0
    down["on"] = False
    await eventually(lambda: _unacked(queue) == 0, what="acked once the sink accepted it")
    assert await queue_depth(queue) == 0
    held = [r for r in sink.received if r.ce_id == "held"]
    assert len(held) == len(sink.received) >= 3  # the same event each attempt


def _unacked(queue: str) -> int:
    from tests.support.rabbit import rabbitmqctl

    out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return int(parts[1])
    raise AssertionError(f"queue {queue} not found")


async def test_a_missing_predeclared_queue_is_not_ready_and_declares_nothing(
    start_mesh, make_sink, app_prefix
):
    sink = await make_sink()
    queue = f"{app_prefix}.absent"
    manifest = source_manifest("pre", queue, sink.url).replace(
        "parallelism: 1", "parallelism: 1\n            predeclared: true"
    )
    mesh = await start_mesh(manifest)

    def status():
        return mesh.server.ctx.get("RabbitmqSource", "default", "pre").status

    await eventually(lambda: status().ready == "False", what="not Ready")
    cond = next(c for c in status().conditions if c.type == "Ready")
    assert cond.reason == "QueueNotFound"
    from tests.support.rabbit import list_names

    assert list_names("queues", queue) == []
    # Once its owner declares it, the source takes it as it is.
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True, arguments={"x-max-length": 100})
    await consuming(mesh, "pre")
    await publish("", queue, aio_pika.Message(b"late"))
    got = await sink.wait_for(1)
    assert got[0].body == b"late"


async def test_a_refused_event_goes_to_the_dead_letter_sink_then_is_acked(
    start_mesh, make_sink, app_prefix
):
    sink = await make_sink(lambda _r, _i: Reply(400, body=b"no thanks"))
    dead = await make_sink()
    queue = f"{app_prefix}.dl"
    manifest = source_manifest("dl", queue, sink.url).replace(
        "delivery: {retry: 20, backoffPolicy: linear, backoffDelay: PT0.1S}",
        f'delivery: {{retry: 2, deadLetterSink: {{uri: "{dead.url}"}}}}',
    )
    mesh = await start_mesh(manifest)
    await consuming(mesh, "dl")
    await publish("", queue, aio_pika.Message(b"x", message_id="refused"))
    got = (await dead.wait_for(1))[0]
    assert got.ce_id == "refused"
    assert got.headers["ce-knativeerrorcode"] == "400"
    assert got.headers["ce-knativeerrordest"] == sink.url
    assert len(sink.received) == 1  # 400 is not retried
    await eventually(lambda: _unacked(queue) == 0, what="acked after dead-lettering")
    assert await queue_depth(queue) == 0


@pytest.mark.parametrize("parallelism", [1, 4])
async def test_parallelism_bounds_the_events_in_flight(start_mesh, app_prefix, parallelism):
    """prefetch = parallelism: never more deliveries at once; 1 keeps the queue's order."""
    from aiohttp import web

    release = asyncio.Event()
    inflight, peak, order = 0, 0, []

    async def handle(request: web.Request) -> web.Response:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        order.append(request.headers["ce-id"])
        await release.wait()
        inflight -= 1
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        queue = f"{app_prefix}.par"
        manifest = source_manifest("par", queue, f"http://127.0.0.1:{port}/").replace(
            "parallelism: 1", f"parallelism: {parallelism}"
        )
        mesh = await start_mesh(manifest)
        await consuming(mesh, "par")
        for i in range(10):
            await publish("", queue, aio_pika.Message(b"x", message_id=f"m{i}"))
        await eventually(lambda: inflight == parallelism, what=f"{parallelism} in flight")
        # Held there: the others wait in RabbitMQ, not in rabbitmesh.
        assert await queue_depth(queue) == 10 - parallelism
        release.set()
        await eventually(lambda: len(order) == 10, what="all delivered")
        assert peak == parallelism
        if parallelism == 1:
            assert order == [f"m{i}" for i in range(10)]
    finally:
        release.set()
        await runner.cleanup()
