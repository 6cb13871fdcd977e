"""OpenTelemetry spans for ingress and delivery, when the optional packages are there.

Without `opentelemetry-api` every function here is a cheap no-op and the W3C trace context
is still passed through unchanged (see rabbitmesh/cloudevents/tracecontext.py). With it,
rabbitmesh starts a PRODUCER span per accepted event and a CONSUMER span per delivery
attempt, named and attributed after the OpenTelemetry messaging and CloudEvents semantic
conventions, and the trace context it forwards names its own span as the parent.

Export is configured the standard way: install `rabbitmesh[otel]` and set
`OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_SERVICE_NAME`), or configure a TracerProvider
yourself before rabbitmesh starts (e.g. `opentelemetry-instrument rabbitmesh run`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rabbitmesh.cloudevents import CloudEvent

log = logging.getLogger("rabbitmesh.telemetry")

try:  # optional dependency
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
    _TRACER: Any = otel_trace.get_tracer("rabbitmesh")
except ImportError:  # pragma: no cover - exercised when the extra is not installed
    otel_trace = None  # type: ignore[assignment]  # no module: tracing stays off
    _PROPAGATOR = None
    _TRACER = None


_enabled = False
_checked_at = float("-inf")
#: How often to look again for a TracerProvider while none is installed (the lookup is not
#: free, and it runs for every event).
_RECHECK_SECONDS = 5.0


def enabled() -> bool:
    """True once an OpenTelemetry SDK TracerProvider is installed (not the API's default)."""
    global _enabled, _checked_at
    if _enabled or _TRACER is None:
        return _enabled
    now = time.monotonic()
    if now - _checked_at >= _RECHECK_SECONDS:
        _checked_at = now
        _enabled = type(otel_trace.get_tracer_provider()).__name__ != "ProxyTracerProvider"
    return _enabled


def refresh() -> None:
    """Look for a TracerProvider again at the next event (after installing one)."""
    global _checked_at
    _checked_at = float("-inf")


def configure_exporter() -> None:
    """Set up OTLP export when the endpoint is configured and the SDK is installed."""
    if _TRACER is None or enabled() or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return  # no API, a provider configured already, or nothing to export to
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-sdk or the OTLP exporter is "
            "missing: install rabbitmesh[otel]; spans are not exported"
        )
        return
    name = os.environ.get("OTEL_SERVICE_NAME", "rabbitmesh")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    otel_trace.set_tracer_provider(provider)
    refresh()
    log.info("exporting OpenTelemetry spans to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])


def _event_attributes(event: CloudEvent) -> dict[str, Any]:
    a = event.attributes
    out: dict[str, Any] = {
        "cloudevents.event_id": str(a.get("id", "")),
        "cloudevents.event_source": str(a.get("source", "")),
        "cloudevents.event_type": str(a.get("type", "")),
        "cloudevents.event_spec_version": str(a.get("specversion", "")),
    }
    if "subject" in a:
        out["cloudevents.event_subject"] = str(a["subject"])
    return out


@contextmanager
def span(
    event: CloudEvent, *, operation: str, destination: str, kind: str, **extra: Any
) -> Iterator[None]:
    """A span around publishing (`kind="producer"`) or delivering (`"consumer"`) `event`.

    The span's parent is the event's incoming trace context; inside the span the event's
    trace context is replaced by one naming this span, so the next hop is its child.
    """
    if not enabled():
        yield
        return
    parent = _PROPAGATOR.extract(event.trace or {})
    span_kind = otel_trace.SpanKind.PRODUCER if kind == "producer" else otel_trace.SpanKind.CONSUMER
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.operation": operation,
        "messaging.destination.name": destination,
        **_event_attributes(event),
        **extra,
    }
    token = otel_context.attach(parent)
    try:
        with _TRACER.start_as_current_span(
            f"{operation} {destination}", kind=span_kind, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            if carrier.get("traceparent"):
                state = (event.trace or {}).get("tracestate")
                event.trace = {"traceparent": carrier["traceparent"]}
                if state:
                    event.trace["tracestate"] = state
            yield
    finally:
        otel_context.detach(token)
