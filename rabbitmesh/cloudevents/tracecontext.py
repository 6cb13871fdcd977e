"""W3C Trace Context headers carried beside an event (not inside it).

The CloudEvents distributed-tracing extension keeps `traceparent`/`tracestate` on the
transport: rabbitmesh reads them from the HTTP request, keeps them in the AMQP message's
headers, and sends them with every delivery and reply, so one trace spans the whole path.
Malformed values are dropped rather than forwarded (W3C: a receiver that cannot parse
traceparent must ignore it, and tracestate without a valid traceparent).
"""

from __future__ import annotations

import re

TRACE_HEADERS = ("traceparent", "tracestate")

# version-traceid-parentid-flags; version ff, an all-zero trace id or parent id are invalid.
_TRACEPARENT = re.compile(
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)
_MAX_TRACESTATE = 512


def _header_safe(value: str) -> bool:
    """Printable ASCII only (W3C allows nothing else), so no CR/LF reaches an HTTP header."""
    return value.isascii() and value.isprintable()


def valid_trace(trace: dict[str, str] | None) -> dict[str, str] | None:
    """The usable part of a trace context, or None."""
    if not trace:
        return None
    parent = trace.get("traceparent")
    if not isinstance(parent, str):
        return None
    parent = parent.strip()
    if not _TRACEPARENT.match(parent) or not _header_safe(parent):
        return None
    out = {"traceparent": parent}
    state = trace.get("tracestate")
    if isinstance(state, str) and state and len(state) <= _MAX_TRACESTATE and _header_safe(state):
        out["tracestate"] = state
    return out
