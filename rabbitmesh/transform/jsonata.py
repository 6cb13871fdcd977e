"""JSONata over a whole CloudEvent, as Knative's EventTransform evaluates it.

Knative's transform (a Node.js service running jsonata-js) hands the expression the event in
the CloudEvents JSON format: every context attribute at top level and the payload as `data`
(parsed when it is JSON, a string when it is text, else `data_base64`). The result must again
be a CloudEvent in the JSON format. We do the same with `jsonatapy` (a Rust JSONata engine; the
choice is argued in docs/eventtransform.md), compiling each expression once.

jsonatapy's compiled expressions are bound to the thread that made them, so compilation and
evaluation both happen on the event loop's thread: a typical expression takes ~10 µs there, and
`timeout_ms` bounds the worst one (an expression that loops or builds huge ranges) so one event
cannot hold the loop for long.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jsonatapy

from rabbitmesh.cloudevents import CloudEvent, InvalidEvent
from rabbitmesh.cloudevents.jsonformat import event_from_json, event_to_json

#: Longest sequence an expression may build (`[1..1e9]` would take the memory of the process).
MAX_SEQUENCE = 100_000
#: Deepest recursion an expression may reach.
MAX_STACK_DEPTH = 200


class TransformError(Exception):
    """The expression failed on this event, or produced no valid CloudEvent (a 4xx-like
    failure of the delivery: retried as configured, then dead-lettered)."""


class ExpressionError(ValueError):
    """The expression does not compile (a manifest error, reported at validation)."""


@lru_cache(maxsize=1024)
def compiled(expression: str) -> Any:
    """The compiled form of `expression`, compiled once per process (an lru cache: a changed
    EventTransform compiles its new expression, the old one ages out)."""
    try:
        return jsonatapy.compile(expression)
    except ValueError as e:
        raise ExpressionError(str(e)) from None


def check_expression(expression: str) -> str | None:
    """Why `expression` does not compile, or None."""
    try:
        compiled(expression)
    except ExpressionError as e:
        return str(e)
    return None


def evaluate(expression: str, value: Any, timeout_ms: int) -> Any:
    """The expression's result on `value` (None when JSONata's result is undefined)."""
    try:
        return compiled(expression).evaluate(
            value,
            timeout=timeout_ms,
            max_stack_depth=MAX_STACK_DEPTH,
            max_sequence_length=MAX_SEQUENCE,
        )
    except ExpressionError as e:
        raise TransformError(f"expression does not compile: {e}") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise TransformError(f"JSONata evaluation failed: {e}") from None


def event_input(event: CloudEvent) -> dict[str, Any]:
    """The event as Knative's transform shows it: attributes at top level plus `data`."""
    return event_to_json(event)


def transform_event(expression: str, event: CloudEvent, timeout_ms: int) -> CloudEvent:
    """The CloudEvent the expression makes of `event`; TransformError when it makes none."""
    result = evaluate(expression, event_input(event), timeout_ms)
    if not isinstance(result, dict):
        kind = "nothing (undefined)" if result is None else f"a {type(result).__name__}"
        raise TransformError(
            f"the expression produced {kind}, not a CloudEvent object "
            "(specversion, id, source, type and data at top level)"
        )
    try:
        out = event_from_json(result)
    except InvalidEvent as e:
        raise TransformError(f"the expression's result is not a valid CloudEvent: {e}") from None
    out.trace = event.trace
    return out
