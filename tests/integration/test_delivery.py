"""Knative's delivery rules (docs/contract.md §4) against a real RabbitMQ and real HTTP sinks."""

from __future__ import annotations

import base64
import json

import aio_pika
import orjson
import pytest

from rabbitmesh.amqp.names import Names
from tests.support.events import binary_headers, post, post_binary
from tests.support.manifests import request_reply_triggers
from tests.support.mesh import AMQP_URL
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def broker_and_trigger(
    sub_url: str,
    delivery: str = "",
    trigger_filter: str = "",
    broker_delivery: str = "",
    name: str = "tr",
) -> str:
    return f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: br}}
        spec: {{{broker_delivery}}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: {name}}}
        spec:
          broker: br
          {trigger_filter}
          subscriber: {{uri: "{sub_url}"}}
          {delivery}
        """


def gaps(sink) -> list[float]:
    times = [r.at for r in sink.received]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_retries_then_dead_letter_with_error_extensions(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(503, body=b"sorry, down"))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url,
            f"delivery: {{retry: 3, backoffPolicy: linear, backoffDelay: PT0.05S, "
            f'deadLetterSink: {{uri: "{dls.url}"}}}}',
        )
    )
    status, eid = await post_binary(mesh.url + "/default/br", data={"k": "v"}, myext="x")
    assert status == 202
    (dead,) = await dls.wait_for(1)
    assert len(sub.received) == 4  # 1 attempt + 3 retries
    assert set(sub.ids()) == {eid}
    assert dead.headers["ce-id"] == eid
    assert dead.headers["ce-myext"] == "x"
    assert dead.headers["ce-knativeerrordest"] == sub.url
    assert dead.headers["ce-knativeerrorcode"] == "503"
    assert base64.b64decode(dead.headers["ce-knativeerrordata"]) == b"sorry, down"
    assert json.loads(dead.body) == {"k": "v"}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("exponential", [0.2, 0.4, 0.8]),
        ("linear", [0.2, 0.4, 0.6]),
    ],
)
async def test_backoff_spacing(start_mesh, make_sink, policy, expected):
    sub = await make_sink(lambda r, i: Reply(500))
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url, f"delivery: {{retry: 3, backoffPolicy: {policy}, backoffDelay: PT0.2S}}"
        )
    )
    assert (await post_binary(mesh.url + "/default/br"))[0] == 202
    await sub.wait_for(4)
    for got, want in zip(gaps(sub), expected, strict=True):
        # RabbitMQ expires TTL messages on a timer of its own: allow it to be a little early.
        assert want - 0.05 <= got <= want + 0.35, (gaps(sub), expected)


@pytest.mark.parametrize("code", [400, 401, 403, 413, 422])
async def test_non_retryable_codes_go_straight_to_dead_letter(start_mesh, make_sink, code):
    sub = await make_sink(lambda r, i: Reply(code))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url,
            f'delivery: {{retry: 5, backoffDelay: PT0.01S, deadLetterSink: {{uri: "{dls.url}"}}}}',
        )
    )
    await post_binary(mesh.url + "/default/br")
    (dead,) = await dls.wait_for(1)
    assert len(sub.received) == 1
    assert dead.headers["ce-knativeerrorcode"] == str(code)


@pytest.mark.parametrize("code", [404, 408, 409, 429, 500, 502, 504])
async def test_retryable_codes_are_retried(start_mesh, make_sink, code):
    sub = await make_sink(lambda r, i: Reply(code) if i < 2 else Reply(200))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url,
            f'delivery: {{retry: 5, backoffDelay: PT0.01S, deadLetterSink: {{uri: "{dls.url}"}}}}',
        )
    )
    await post_binary(mesh.url + "/default/br")
    await sub.wait_for(3)
    worker = mesh.server.ctx.workers[
        Names(mesh.settings.topology_prefix).trigger_queue("default", "tr")
    ]
    await eventually(lambda: worker.stats.delivered == 1, what="delivery acked")
    assert len(sub.received) == 3 and dls.received == []


async def test_timeout_counts_as_failure_with_code_500(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(200, delay=3.0))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url,
            f"delivery: {{retry: 1, timeout: PT0.3S, backoffDelay: PT0.01S, "
            f'deadLetterSink: {{uri: "{dls.url}"}}}}',
        )
    )
    await post_binary(mesh.url + "/default/br")
    (dead,) = await dls.wait_for(1, timeout=15)
    assert len(sub.received) == 2
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert "ce-knativeerrordata" not in dead.headers


async def test_without_a_delivery_timeout_the_default_one_applies(start_mesh, make_sink):
    """A subscriber that takes the request and never answers held the event for ever (no
    retry, no dead letter): RABBITMESH_DEFAULT_DELIVERY_TIMEOUT bounds every attempt whose
    delivery spec sets no timeout."""
    sub = await make_sink(lambda r, i: Reply(200, delay=600.0))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url, f'delivery: {{retry: 0, deadLetterSink: {{uri: "{dls.url}"}}}}'
        ),
        default_delivery_timeout="PT0.5S",
    )
    await post_binary(mesh.url + "/default/br")
    (dead,) = await dls.wait_for(1, timeout=20)
    assert len(sub.received) == 1
    assert dead.headers["ce-knativeerrorcode"] == "500"


async def test_retry_after_is_honoured_up_to_retry_after_max(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(429, {"Retry-After": "1"}) if i == 0 else Reply(200))
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url, "delivery: {retry: 2, backoffDelay: PT0.01S, retryAfterMax: PT5S}"
        )
    )
    await post_binary(mesh.url + "/default/br")
    await sub.wait_for(2, timeout=10)
    # At least the second the subscriber asked for (not the 10 ms backoff), and not the 5 s
    # retryAfterMax either: a lower bound, and an upper one far from what a slow machine adds.
    assert 0.95 <= gaps(sub)[0] < 5, gaps(sub)


async def test_retry_after_is_ignored_without_retry_after_max(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(503, {"Retry-After": "5"}) if i == 0 else Reply(200))
    mesh = await start_mesh(
        broker_and_trigger(sub.url, "delivery: {retry: 2, backoffDelay: PT0.01S}")
    )
    await post_binary(mesh.url + "/default/br")
    await sub.wait_for(2, timeout=10)
    assert gaps(sub)[0] < 0.5, gaps(sub)


async def test_trigger_inherits_broker_delivery(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(500))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url,
            broker_delivery=f"delivery: {{retry: 1, backoffDelay: PT0.01S, "
            f'deadLetterSink: {{uri: "{dls.url}"}}}}',
        )
    )
    await post_binary(mesh.url + "/default/br")
    await dls.wait_for(1)
    assert len(sub.received) == 2


async def test_default_delivery_comes_from_settings(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(500))
    mesh = await start_mesh(
        broker_and_trigger(sub.url), default_retry=2, default_backoff_delay="PT0.01S"
    )
    await post_binary(mesh.url + "/default/br")
    await sub.wait_for(3)
    q = Names(mesh.settings.topology_prefix).trigger_queue("default", "tr")
    await eventually(lambda: mesh.server.ctx.workers[q].stats.dropped == 1, what="drop")
    assert len(sub.received) == 3


async def test_reply_goes_back_to_the_broker(start_mesh, make_sink):
    reply_headers = {
        "ce-specversion": "1.0",
        "ce-id": "r1",
        "ce-type": "com.example.reply",
        "ce-source": "replier",
        "content-type": "text/plain",
    }
    replier = await make_sink(lambda r, i: Reply(200, reply_headers, b"the reply"))
    final = await make_sink()
    mesh = await start_mesh(request_reply_triggers(replier.url, final.url))
    await post_binary(mesh.url + "/default/br", "com.example.request")
    (got,) = await final.wait_for(1)
    assert got.headers["ce-id"] == "r1"
    assert got.headers["ce-source"] == "replier"
    assert got.body == b"the reply"
    assert "ce-knativebrokerttl" not in got.headers
    assert "ce-knativearrivaltime" in got.headers
    assert len(replier.received) == 1


async def test_reply_loop_stops_at_broker_ttl(start_mesh, make_sink):
    """A subscriber that answers every event with one its own trigger matches."""

    def echo(r, i):
        return Reply(
            200,
            {"ce-specversion": "1.0", "ce-id": f"loop{i}", "ce-type": "loop", "ce-source": "echo"},
        )

    sub = await make_sink(echo)
    mesh = await start_mesh(broker_and_trigger(sub.url))
    status, _ = await post_binary(mesh.url + "/default/br", "loop", knativebrokerttl="5")
    assert status == 202
    q = Names(mesh.settings.topology_prefix).trigger_queue("default", "tr")
    worker = mesh.server.ctx.workers[q]
    # ttl 5 -> 4 at ingress; replies carry 3, 2, 1; the reply that would carry 0 is dropped.
    await eventually(lambda: worker.stats.delivered >= 4, what="4 deliveries")
    await eventually(lambda: worker.stats.in_flight == 0, what="worker idle")
    assert len(sub.received) == 4


async def test_non_event_reply_body_is_a_failure(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(200, {"content-type": "text/plain"}, b"ok thanks"))
    dls = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url,
            f'delivery: {{retry: 1, backoffDelay: PT0.01S, deadLetterSink: {{uri: "{dls.url}"}}}}',
        )
    )
    await post_binary(mesh.url + "/default/br")
    (dead,) = await dls.wait_for(1)
    assert len(sub.received) == 2
    assert dead.headers["ce-knativeerrorcode"] == "502"
    assert base64.b64decode(dead.headers["ce-knativeerrordata"]) == b"ok thanks"


async def test_structured_delivery_with_format_json(start_mesh, make_sink):
    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url, "delivery: {format: json}"))
    _, eid = await post_binary(mesh.url + "/default/br", data={"a": 1}, myext="v")
    (got,) = await sub.wait_for(1)
    assert got.headers["content-type"].startswith("application/cloudevents+json")
    doc = orjson.loads(got.body)
    assert doc["id"] == eid and doc["myext"] == "v" and doc["data"] == {"a": 1}


async def test_attribute_filters_exact_and_wildcard(start_mesh, make_sink):
    sub = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(
            sub.url, trigger_filter='filter: {attributes: {type: com.example.a, color: ""}}'
        )
    )
    url = mesh.url + "/default/br"
    _, no_ext = await post_binary(url, "com.example.a")
    _, empty = await post_binary(url, "com.example.a", color="")
    _, other_type = await post_binary(url, "com.example.b", color="red")
    _, match = await post_binary(url, "com.example.a", color="blue")
    await sub.wait_for(1)
    q = Names(mesh.settings.topology_prefix).trigger_queue("default", "tr")
    worker = mesh.server.ctx.workers[q]
    # com.example.b never reaches the queue (binding); the other two are filtered out.
    await eventually(lambda: worker.stats.filtered == 2, what="two events filtered")
    assert sub.ids() == [match]
    assert {no_ext, empty, other_type}.isdisjoint(sub.ids())


async def test_amqp_native_publish_is_routed_like_http(start_mesh, make_sink):
    sub = await make_sink()
    mesh = await start_mesh(
        broker_and_trigger(sub.url, trigger_filter="filter: {attributes: {type: com.example.amqp}}")
    )
    exchange = Names(mesh.settings.topology_prefix).broker_exchange("default", "br")
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        x = await ch.get_exchange(exchange)
        await x.publish(
            aio_pika.Message(
                b'{"via": "amqp"}',
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": "amqp-1",
                    "ce-source": "native",
                    "ce-type": "com.example.amqp",
                    "ce-count": 3,
                },
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="com.example.amqp",
        )
    (got,) = await sub.wait_for(1)
    assert got.headers["ce-id"] == "amqp-1"
    assert got.headers["ce-count"] == "3"
    assert "ce-knativearrivaltime" in got.headers
    assert got.body == b'{"via": "amqp"}'


async def test_concurrency_one_delivers_in_order(start_mesh, make_sink):
    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url), concurrency=1)
    sent = []
    for i in range(40):
        status, eid = await post_binary(mesh.url + "/default/br", id_=f"e{i:03d}")
        assert status == 202
        sent.append(eid)
    await sub.wait_for(40)
    assert sub.ids() == sent


async def test_poison_message_is_parked_once(start_mesh, make_sink):
    sub = await make_sink()
    mesh = await start_mesh(broker_and_trigger(sub.url))
    names = Names(mesh.settings.topology_prefix)
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        await ch.default_exchange.publish(
            aio_pika.Message(b"\x00not an event", headers={"x": 1}),
            routing_key=names.trigger_queue("default", "tr"),
        )
        parked = await ch.declare_queue(names.parked_queue, passive=True)
        msg = await eventually(lambda: parked.get(fail=False), what="parked message")
        assert msg.body == b"\x00not an event"
        assert msg.headers["x-rabbitmesh-parked-from"] == names.trigger_queue("default", "tr")
        await msg.ack()
    assert sub.received == []


async def test_trace_context_is_kept_through_trigger_and_reply(start_mesh, make_sink):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    reply_headers = {
        "ce-specversion": "1.0",
        "ce-id": "r1",
        "ce-type": "com.example.reply",
        "ce-source": "replier",
    }
    replier = await make_sink(lambda r, i: Reply(200, reply_headers))
    final = await make_sink()
    mesh = await start_mesh(request_reply_triggers(replier.url, final.url))
    headers = {
        **binary_headers("com.example.request"),
        "traceparent": traceparent,
        "tracestate": "vendor=1",
    }
    status, _, _ = await post(mesh.url + "/default/br", headers=headers, body=b"{}")
    assert status == 202
    (first,) = await replier.wait_for(1)
    (second,) = await final.wait_for(1)
    # Same trace id end to end (the parent span id changes when OpenTelemetry is recording).
    trace_id = traceparent.split("-")[1]
    assert first.headers["traceparent"].split("-")[1] == trace_id
    assert first.headers["tracestate"] == "vendor=1"
    assert second.headers["traceparent"].split("-")[1] == trace_id  # the reply continues it
    assert "ce-traceparent" not in first.headers
