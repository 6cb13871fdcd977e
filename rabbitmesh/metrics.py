"""Prometheus metrics, named as Knative's where an equivalent exists.

Labels stay low-cardinality: resource names, the event type, and the response code class.
The event type is a label value only when configuration names it (`bounded_type`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

ingress_events = Counter(
    "event_count",
    "Events received by an ingress (broker, channel or flow), by response code class.",
    ["kind", "namespace", "name", "event_type", "response_code_class"],
    registry=REGISTRY,
)
ingress_request_bytes = Histogram(
    "ingress_request_size_bytes",
    "Size of ingress request bodies.",
    ["kind"],
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
    registry=REGISTRY,
)
dispatch_events = Counter(
    "dispatch_event_count",
    "Delivery attempts to subscribers, by response code class (0xx = no response).",
    ["subscriber", "event_type", "response_code_class"],
    registry=REGISTRY,
)
dispatch_latency = Histogram(
    "event_dispatch_latencies",
    "Time of one delivery attempt to a subscriber, in seconds.",
    ["subscriber"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
unrouted = Counter(
    "event_dropped_no_subscriber",
    "Accepted events that no trigger or subscription queue took (dropped, as Knative does).",
    ["exchange"],
    registry=REGISTRY,
)
retries = Counter(
    "event_retries", "Deliveries scheduled for another attempt.", ["subscriber"], registry=REGISTRY
)
dead_lettered = Counter(
    "event_dead_lettered",
    "Events handed to the dead-letter path after their last attempt.",
    ["subscriber"],
    registry=REGISTRY,
)
dead_letters_kept = Counter(
    "event_dead_letters_kept",
    "Events kept in a dead-letter store (no dead-letter sink took them) for listing and "
    "redrive (docs/delivery.md).",
    ["subscriber"],
    registry=REGISTRY,
)
dropped = Counter(
    "event_dropped",
    "Events dropped after their last attempt because no dead-letter sink is set.",
    ["subscriber"],
    registry=REGISTRY,
)
parked = Counter(
    "messages_parked",
    "Messages that were not CloudEvents, moved to the parked queue.",
    ["queue"],
    registry=REGISTRY,
)
eventtype_auto_create_refused = Counter(
    "eventtype_auto_create_refused",
    "(type, source) pairs seen at an ingress that were not registered as EventTypes because "
    "their broker or channel is at RABBITMESH_EVENTTYPE_AUTO_CREATE_MAX_PER_BROKER "
    '(reason="limit") or RABBITMESH_EVENTTYPE_AUTO_CREATE_PER_MINUTE (reason="rate").',
    ["kind", "namespace", "name", "reason"],
    registry=REGISTRY,
)


def code_class(status: int) -> str:
    return f"{status // 100}xx"


#: Most event types given their own label value; every other type is counted as "other".
MAX_EVENT_TYPES = 1000
_known_types: frozenset[str] = frozenset()


def set_known_types(types: Iterable[str]) -> None:
    """The event types that get their own label value, most important first (the first
    MAX_EVENT_TYPES are kept). Configuration names them (rabbitmesh/reconciler/known_types.py),
    never traffic: a sender cannot add a label, nor fill the set before the real types."""
    global _known_types
    kept: dict[str, None] = {}
    for t in types:
        if len(kept) >= MAX_EVENT_TYPES:
            break
        kept[t] = None
    _known_types = frozenset(kept)


def bounded_type(event_type: str) -> str:
    """The event type as a label value: itself when configuration names it, else "other"."""
    return event_type if event_type in _known_types else "other"


# --- the hosted kinds of issue 15 (EventTransform, RequestReply, JobSink) ---------------------
transforms_total = Counter(
    "rabbitmesh_eventtransform_events_total",
    "Events an EventTransform evaluated (result: ok, failed).",
    ["namespace", "name", "result"],
    registry=REGISTRY,
)
requestreply_total = Counter(
    "rabbitmesh_requestreply_requests_total",
    "RequestReply requests (result: replied, timeout, refused, dead_lettered) and publish "
    "retries of spec.delivery (publish_retried).",
    ["namespace", "name", "result"],
    registry=REGISTRY,
)
jobsink_runs_total = Counter(
    "rabbitmesh_jobsink_runs_total",
    "JobSink runs that ended (result: succeeded, failed, interrupted, duplicate).",
    ["namespace", "name", "result"],
    registry=REGISTRY,
)
