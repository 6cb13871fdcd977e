"""OpenTelemetry spans: a trace followed from ingress across a trigger and its reply."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from tests.support.events import binary_headers, post  # noqa: E402
from tests.support.manifests import request_reply_triggers
from tests.support.sink import Reply  # noqa: E402
from tests.support.waiting import eventually  # noqa: E402

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def spans():
    """The SDK provider can be set once per process; spans are filtered by our trace id."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    from rabbitmesh import telemetry

    telemetry.refresh()  # earlier tests may have looked before this provider existed
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def test_spans_follow_the_event_and_its_reply(start_mesh, make_sink, spans):
    reply = {
        "ce-specversion": "1.0",
        "ce-id": "r1",
        "ce-type": "com.example.reply",
        "ce-source": "replier",
    }
    replier = await make_sink(lambda r, i: Reply(200, reply))
    final = await make_sink()
    mesh = await start_mesh(request_reply_triggers(replier.url, final.url))
    headers = {
        **binary_headers("com.example.request", id_="e1"),
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    }
    assert (await post(mesh.url + "/default/br", headers=headers, body=b"{}"))[0] == 202
    (first,) = await replier.wait_for(1)
    (second,) = await final.wait_for(1)

    def ours():
        return [
            s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID
        ]

    await eventually(lambda: len(ours()) >= 3, what="publish + 2 delivery spans")
    by_name = {s.name: s for s in ours()}
    publish = next(s for s in ours() if s.kind == trace.SpanKind.PRODUCER)
    deliveries = [s for s in ours() if s.kind == trace.SpanKind.CONSUMER]
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["cloudevents.event_id"] == "e1"
    assert publish.attributes["cloudevents.event_type"] == "com.example.request"
    assert format(publish.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert {s.attributes["cloudevents.event_type"] for s in deliveries} == {
        "com.example.request",
        "com.example.reply",
    }
    first_delivery = next(
        s for s in deliveries if s.attributes["cloudevents.event_type"] == "com.example.request"
    )
    assert first_delivery.parent.span_id == publish.context.span_id
    # what the subscribers saw: the same trace, with rabbitmesh's span as parent
    assert first.headers["traceparent"].split("-")[1] == TRACE_ID
    assert first.headers["traceparent"].split("-")[2] == format(
        first_delivery.context.span_id, "016x"
    )
    assert second.headers["traceparent"].split("-")[1] == TRACE_ID
    assert len(ours()) == 3, [s.name for s in ours()]
    # names are "<operation> <destination>": the broker's exchange, then each trigger's queue
    prefix = mesh.settings.topology_prefix
    assert sorted(by_name) == sorted(
        [
            f"publish {prefix}.broker.default.br",
            f"process {prefix}.trigger.default.first",
            f"process {prefix}.trigger.default.second",
        ]
    )
