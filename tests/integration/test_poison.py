"""Poison messages (issue 11, item 3): what can never succeed is dead-lettered or parked once,
never requeued in a loop. Real RabbitMQ, real `rabbitmesh run` (in-process), real HTTP sinks.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import aio_pika
import orjson
import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.dispatch.worker import HANDLER_ERROR_LIMIT, HANDLER_ERRORS_HEADER, QueueWorker
from rabbitmesh.filters.bindings import routing_key_for_type
from tests.integration.test_delivery import broker_and_trigger
from tests.support.events import post_binary
from tests.support.mesh import AMQP_URL, MeshProcess, write_manifests
from tests.support.rabbit import list_names
from tests.support.sink import Received, Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

REQUEST = "com.example.request"
ONLY_REQUESTS = f"filter: {{attributes: {{type: {REQUEST}}}}}"


def delivery(dls_url: str, retry: int, fmt: str = "binary") -> str:
    return (
        f"delivery: {{retry: {retry}, backoffPolicy: linear, backoffDelay: PT0.05S, "
        f'format: {fmt}, deadLetterSink: {{uri: "{dls_url}"}}}}'
    )


def worker_of(mesh: Any, queue: str) -> QueueWorker:
    return mesh.server.ctx.workers[queue]


def records_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("rabbitmesh.dispatch") and text in r.getMessage()
    ]


async def publish_amqp(mesh: Any, exchange: str, event_id: str, body: bytes) -> None:
    """Publish as an AMQP-native producer does (CONTRACT.md §3), bypassing the ingress."""
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        x = await ch.get_exchange(exchange)
        await x.publish(
            aio_pika.Message(
                body,
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": event_id,
                    "ce-source": "native",
                    "ce-type": REQUEST,
                },
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key_for_type(REQUEST),
        )


async def test_data_too_deep_for_json_format_is_dead_lettered_once(start_mesh, make_sink, caplog):
    """A Trigger with `delivery.format: json` cannot write data nested 1,000 deep as JSON:
    it raised RecursionError on every attempt and was requeued at once (~800 tracebacks/s)."""
    caplog.set_level(logging.INFO, logger="rabbitmesh")
    sub = await make_sink()
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(sub.url, delivery(dls.url, 3, "json"), ONLY_REQUESTS)
    )
    names = Names(mesh.settings.topology_prefix)
    queue = names.trigger_queue("default", "tr")
    nested = b"[" * 1000 + b"]" * 1000
    await publish_amqp(mesh, names.broker_exchange("default", "br"), "deep-1", nested)

    (dead,) = await dls.wait_for(1)
    assert dead.headers["ce-id"] == "deep-1"
    assert dead.headers["ce-knativeerrorcode"] == "422"
    assert dead.headers["ce-knativeerrordest"] == sub.url
    why = base64.b64decode(dead.headers["ce-knativeerrordata"]).decode()
    assert "nested too deeply" in why and "structured" in why
    # The sink still gets the event, data intact: in binary mode, since JSON cannot carry it.
    assert dead.body == nested

    # A later event goes through the same worker: by then a loop would have shown.
    status, later = await post_binary(mesh.url + "/default/br", REQUEST)
    assert status == 202
    (got,) = await sub.wait_for(1)
    assert orjson.loads(got.body)["id"] == later  # structured: the deep event never came
    worker = worker_of(mesh, queue)
    await eventually(lambda: worker.stats.dead_lettered == 1, what="dead-letter counted")
    assert worker.stats.attempts == 2  # one for each event: the deep one was never retried
    assert worker.stats.retried == 0
    assert worker.stats.handler_errors == 0
    assert worker_of(mesh, names.dead_letter_queue(queue)).stats.parked == 0
    # Logged once, without a traceback.
    lines = records_about(caplog, "deep-1")
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("rabbitmesh"))


def reply_to_requests(reply: Mapping[str, str], body: bytes = b"") -> Any:
    """A subscriber answering every request with `reply`, anything else with an empty 202."""

    def answer(r: Received, _i: int) -> Reply:
        if r.headers.get("ce-type") == REQUEST and r.headers.get("ce-poison") == "yes":
            return Reply(200, dict(reply), body)
        return Reply(202)

    return answer


async def test_reply_with_overlong_id_is_a_failed_delivery(start_mesh, make_sink):
    """A reply whose `id` AMQP cannot carry (> 255 bytes) made its event be redelivered
    every second, for ever. Now: retried per the policy, then dead-lettered, exactly."""
    reply = {
        "ce-specversion": "1.0",
        "ce-id": "r" * 300,
        "ce-type": "com.example.reply",
        "ce-source": "replier",
    }
    sub = await make_sink(reply_to_requests(reply))
    dls = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url, delivery(dls.url, 2), ONLY_REQUESTS))
    queue = Names(mesh.settings.topology_prefix).trigger_queue("default", "tr")
    url = mesh.url + "/default/br"
    status, eid = await post_binary(url, REQUEST, poison="yes")
    assert status == 202

    (dead,) = await dls.wait_for(1)
    assert dead.headers["ce-id"] == eid
    assert dead.headers["ce-knativeerrorcode"] == "502"
    why = base64.b64decode(dead.headers["ce-knativeerrordata"]).decode()
    assert "reply" in why and "'id'" in why and "255" in why

    status, later = await post_binary(url, REQUEST)
    assert status == 202
    await sub.wait_for(4)
    assert sub.ids() == [eid, eid, eid, later]  # 1 attempt + 2 retries, then on
    worker = worker_of(mesh, queue)
    await eventually(lambda: worker.stats.delivered == 1, what="later event delivered")
    assert (worker.stats.retried, worker.stats.dead_lettered) == (2, 1)
    assert worker.stats.attempts == 4
    assert worker.stats.handler_errors == 0
    assert len(dls.received) == 1


async def test_reply_over_frame_max_is_dead_lettered_and_connection_survives(
    start_mesh, make_sink, caplog
):
    """A reply with a 200 kB extension would be AMQP headers over RabbitMQ's frame_max:
    published, it closes the shared connection. It must be a failed delivery instead."""
    caplog.set_level(logging.INFO, logger="rabbitmesh")
    big = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "big-reply",
            "type": "com.example.reply",
            "source": "replier",
            "big": "x" * 200_000,
        }
    )
    sub = await make_sink(reply_to_requests({"content-type": "application/cloudevents+json"}, big))
    dls = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url, delivery(dls.url, 1), ONLY_REQUESTS))
    publisher = mesh.server.publisher
    transport = publisher.connection.transport
    url = mesh.url + "/default/br"
    status, eid = await post_binary(url, REQUEST, poison="yes")
    assert status == 202

    (dead,) = await dls.wait_for(1)
    assert dead.headers["ce-id"] == eid
    assert dead.headers["ce-knativeerrorcode"] == "502"
    why = base64.b64decode(dead.headers["ce-knativeerrordata"]).decode()
    assert "frame limit" in why and "'ce-big'" in why
    assert sub.ids() == [eid, eid]  # 1 attempt + 1 retry

    # The connection every publisher shares is the one it was: never closed.
    status, later = await post_binary(url, REQUEST)
    assert status == 202
    await sub.wait_for(3)
    assert publisher.connected and publisher.connection.transport is transport
    assert not [
        r for r in caplog.records if "connection" in r.getMessage() and "lost" in r.getMessage()
    ]


class ExplodingFilter:
    """Stands for any bug in handling: the worker's filter is its plug-in point (the
    EventFilter protocol), and this one raises for one event and passes all others."""

    def __init__(self, poison_id: str) -> None:
        self.poison_id = poison_id

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        if attributes.get("id") == self.poison_id:
            raise RuntimeError("a bug that only this event triggers")
        return True


async def test_redelivery_guard_parks_after_a_few_unexpected_errors(start_mesh, make_sink, caplog):
    """An unforeseen exception used to nack with requeue: a tight loop for ever. Now each one
    is counted in the message, and the message is parked at the limit."""
    caplog.set_level(logging.INFO, logger="rabbitmesh")
    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url))
    names = Names(mesh.settings.topology_prefix)
    queue = names.trigger_queue("default", "tr")
    url = mesh.url + "/default/br"
    poison_id = "poison-1"
    worker = worker_of(mesh, queue)
    worker.subscriber = dataclasses.replace(worker.subscriber, filter=ExplodingFilter(poison_id))

    status, _ = await post_binary(url, REQUEST, id_=poison_id)
    assert status == 202
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        parked_q = await ch.declare_queue(names.parked_queue, passive=True)
        parked = await eventually(
            lambda: parked_q.get(fail=False), timeout=20, what="parked message"
        )
        await parked.ack()
    assert parked.headers["ce-id"] == poison_id
    assert parked.headers["x-rabbitmesh-parked-from"] == queue
    reason = parked.headers["x-rabbitmesh-parked-reason"]
    assert f"failed {HANDLER_ERROR_LIMIT} times" in reason and "RuntimeError" in reason
    assert parked.headers[HANDLER_ERRORS_HEADER] == HANDLER_ERROR_LIMIT - 1

    status, later = await post_binary(url, REQUEST)
    assert status == 202
    await sub.wait_for(1)
    assert sub.ids() == [later]
    assert worker.stats.handler_errors == HANDLER_ERROR_LIMIT
    await eventually(lambda: worker.stats.parked == 1, what="park counted")
    # One traceback for the message, one line per error.
    errors = records_about(caplog, "unexpected error handling message")
    assert len(errors) == HANDLER_ERROR_LIMIT
    assert sum(1 for r in errors if r.exc_info) == 1


async def test_message_too_large_to_copy_is_dead_lettered_by_rabbitmq_then_parked(
    start_mesh, make_sink
):
    """An AMQP-native event whose headers fit RabbitMQ's frame but not rabbitmesh's margin:
    no copy of it (dead letter, parked copy) can be published as it is. It must still end
    somewhere, once: RabbitMQ's own dead-lettering into the `:dlq`, then the parked queue."""
    sub = await make_sink()
    dls = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url, delivery(dls.url, 2), ONLY_REQUESTS))
    names = Names(mesh.settings.topology_prefix)
    queue = names.trigger_queue("default", "tr")
    frame_max = mesh.server.publisher.frame_max
    big = "x" * (frame_max - 700)  # under frame_max, over frame_max less rabbitmesh's margin
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        x = await ch.get_exchange(names.broker_exchange("default", "br"))
        await x.publish(
            aio_pika.Message(
                b"{}",
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": "huge-1",
                    "ce-source": "native",
                    "ce-type": REQUEST,
                    "ce-big": big,
                },
                content_type="application/json",
            ),
            routing_key=routing_key_for_type(REQUEST),
        )
        # HTTP servers refuse a 130 kB header line (aiohttp: 8190 bytes) with a 4xx: final.
        parked_q = await ch.declare_queue(names.parked_queue, passive=True)
        parked = await eventually(
            lambda: parked_q.get(fail=False), timeout=20, what="parked message"
        )
        await parked.ack()
    assert parked.body == b"{}"
    assert parked.headers["x-rabbitmesh-parked-from"] == names.dead_letter_queue(queue)
    assert "dead-letter sink" in parked.headers["x-rabbitmesh-parked-reason"]
    assert "ce-big" not in parked.headers  # what did not fit is left out, the body kept

    # Each tried once (the sinks' HTTP parser refuses the request before any handler runs).
    worker = worker_of(mesh, queue)
    assert worker.stats.attempts == 1 and worker.stats.dead_lettered == 1
    assert worker.stats.handler_errors == 0
    dl_worker = worker_of(mesh, names.dead_letter_queue(queue))
    # The stats count a park once RabbitMQ confirmed the copy, a moment after it is visible.
    await eventually(lambda: dl_worker.stats.parked == 1, what="park counted")
    assert dl_worker.stats.attempts == 1
    assert dl_worker.stats.handler_errors == 0
    assert sub.received == [] and dls.received == []


OVERLONG_ID_REPLY = {
    "ce-specversion": "1.0",
    "ce-id": "r" * 300,
    "ce-type": "com.example.reply",
    "ce-source": "replier",
}


@pytest.mark.parametrize("path", ["into the next step's channel", "into the reply queue"])
async def test_flow_step_reply_that_cannot_be_published_is_a_failed_delivery(
    start_mesh, make_sink, path
):
    """The same rule for Subscriptions, Sequences and Parallels: a reply published into a
    hosted channel (ExchangeReplier) or parked for an external `reply` URL (QueueReplier)."""
    bad = await make_sink(lambda r, i: Reply(200, dict(OVERLONG_ID_REPLY)))
    after, end, dls = await make_sink(), await make_sink(), await make_sink()
    step = (
        f'{{uri: "{bad.url}", delivery: {{retry: 1, backoffDelay: PT0.05S, '
        f'deadLetterSink: {{uri: "{dls.url}"}}}}}}'
    )
    steps = [step, f'{{uri: "{after.url}"}}'] if path.startswith("into the next") else [step]
    body = "\n".join(f"            - {s}" for s in steps)
    mesh = await start_mesh(
        f"""
        apiVersion: flows.knative.dev/v1
        kind: Sequence
        metadata: {{name: seq}}
        spec:
          steps:
{body}
          reply: {{uri: "{end.url}"}}
        """
    )
    status, eid = await post_binary(mesh.url + "/sequences/default/seq")
    assert status == 202
    (dead,) = await dls.wait_for(1)
    assert dead.ce_id == eid
    assert dead.headers["ce-knativeerrorcode"] == "502"
    assert "'id'" in base64.b64decode(dead.headers["ce-knativeerrordata"]).decode()
    queue = mesh.server.names.flow_queue("sequence", "default", "seq-kn-sequence-0")
    worker = worker_of(mesh, queue)
    await eventually(lambda: worker.stats.dead_lettered == 1, what="dead letter counted")
    assert bad.ids() == [eid, eid]  # 1 attempt + 1 retry
    assert (worker.stats.retried, worker.stats.handler_errors) == (1, 0)
    assert after.received == [] and end.received == []


async def test_redelivery_guard_count_travels_with_the_message(start_mesh, make_sink):
    """The count is in the message, not in a process's memory: a message that already failed
    twice (in a replica that was restarted since, say) is parked at its next error."""
    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url))
    names = Names(mesh.settings.topology_prefix)
    queue = names.trigger_queue("default", "tr")
    worker = worker_of(mesh, queue)
    worker.subscriber = dataclasses.replace(worker.subscriber, filter=ExplodingFilter("old-1"))
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        await ch.default_exchange.publish(
            aio_pika.Message(
                b"{}",
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": "old-1",
                    "ce-source": "native",
                    "ce-type": REQUEST,
                    HANDLER_ERRORS_HEADER: HANDLER_ERROR_LIMIT - 1,
                },
                content_type="application/json",
            ),
            routing_key=queue,
        )
        parked_q = await ch.declare_queue(names.parked_queue, passive=True)
        parked = await eventually(lambda: parked_q.get(fail=False), what="parked message")
        await parked.ack()
    assert parked.headers["ce-id"] == "old-1"
    # The stats count a park once RabbitMQ confirmed the copy, a moment after it is visible.
    await eventually(lambda: worker.stats.parked == 1, what="park counted")
    assert worker.stats.handler_errors == 1


async def test_real_process_logs_a_poison_message_once(tmp_path, prefix, make_sink):
    """`rabbitmesh run` as a user starts it: the deep-JSON event of the issue (a log growing
    1.4 MB/s) now costs one log line and no traceback."""
    sub, dls = await make_sink(), await make_sink()
    write_manifests(
        tmp_path / "config",
        broker_and_trigger(sub.url, delivery(dls.url, 3, "json"), ONLY_REQUESTS),
    )
    mesh = await MeshProcess(tmp_path / "config", prefix).start()
    try:
        names = Names(prefix)
        nested = b"[" * 1000 + b"]" * 1000
        await publish_amqp(mesh, names.broker_exchange("default", "br"), "deep-2", nested)
        (dead,) = await dls.wait_for(1)
        assert dead.headers["ce-knativeerrorcode"] == "422"
        status, later = await post_binary(mesh.url + "/default/br", REQUEST)
        assert status == 202
        await sub.wait_for(1)
    finally:
        await mesh.stop()
    out = mesh.output()
    assert "Traceback" not in out and "RecursionError" not in out, out[-3000:]
    assert sum(1 for line in out.splitlines() if "deep-2" in line) == 1, out[-3000:]


async def test_a_header_that_is_not_utf8_is_parked_once(start_mesh, make_sink, monkeypatch):
    """An AMQP producer's `ce-` header whose long string is not UTF-8 arrives as bytes (no
    CloudEvent: parked). Its parked copy could not be published (pamqp cannot encode bytes:
    TypeError), nor the redelivery guard's copy: the message came back and was "parked"
    again about once a second, for ever (21 ERROR lines in 20 s, never parked). Now headers
    received as bytes are sent on as byte arrays, and it is parked once, headers intact."""
    from tests.integration.test_ordering import LongStringBytes, publish_raw_long_strings

    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url, "", ONLY_REQUESTS))
    names = Names(mesh.settings.topology_prefix)
    queue = names.trigger_queue("default", "tr")
    publish_raw_long_strings(monkeypatch)
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        x = await ch.get_exchange(names.broker_exchange("default", "br"))
        await x.publish(
            aio_pika.Message(
                b"{}",
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": "latin1",
                    "ce-source": "native",
                    "ce-type": REQUEST,
                    "ce-subject": LongStringBytes("caf\xe9".encode("latin-1")),
                },
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key_for_type(REQUEST),
        )
    monkeypatch.undo()
    worker = worker_of(mesh, queue)
    await eventually(lambda: worker.stats.parked == 1, timeout=20, what="the event parked")
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        parked = await ch.declare_queue(names.parked_queue, passive=True)
        msg = await parked.get(fail=False)
        assert msg is not None and msg.headers["ce-id"] == "latin1"
        assert bytes(msg.headers["ce-subject"]) == "caf\xe9".encode("latin-1")
        await msg.nack(requeue=True)


async def test_without_a_dead_letter_sink_a_rejection_makes_its_dlq_first(start_mesh, make_sink):
    """A Trigger without a dead-letter sink has no `:dlq` until it needs one (one queue per
    Trigger instead of two: amqp/topology.py). An event no copy of which can be published
    (not to the dead-letter store either) is rejected for RabbitMQ to dead-letter into the
    `:dlq`: the worker declares it first, or RabbitMQ would drop the event."""
    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url, "", ONLY_REQUESTS))
    names = Names(mesh.settings.topology_prefix)
    queue = names.trigger_queue("default", "tr")
    dlq = names.dead_letter_queue(queue)
    assert list_names("queues", queue) == [queue]
    big = "x" * (mesh.server.publisher.frame_max - 700)  # fits RabbitMQ, not a copy of ours
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        x = await ch.get_exchange(names.broker_exchange("default", "br"))
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "huge-2",
            "ce-source": "native",
            "ce-type": REQUEST,
            "ce-big": big,
        }
        await x.publish(
            aio_pika.Message(b"{}", headers=headers, content_type="application/json"),
            routing_key=routing_key_for_type(REQUEST),
        )
        await eventually(lambda: dlq in list_names("queues", queue), timeout=20, what=dlq)
        dead_q = await ch.declare_queue(dlq, passive=True)
        dead = await eventually(lambda: dead_q.get(fail=False), timeout=20, what="dead letter")
        await dead.ack()
    assert dead.headers["ce-id"] == "huge-2" and dead.body == b"{}"
    worker = worker_of(mesh, queue)
    assert worker.stats.attempts == 1 and worker.stats.dead_lettered == 1
    assert dlq not in mesh.server.ctx.workers  # no sink: it waits there, as before
