"""Regressions for the bugs the fuzz tests (tests/fuzz) found, one test each, fast."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitmesh.cesql import compile_expression
from rabbitmesh.cloudevents import (
    CloudEvent,
    InvalidEvent,
    decode_amqp,
    decode_request,
    encode_amqp,
    encode_binary,
)
from rabbitmesh.filters import FilterError, compile_trigger_filter
from rabbitmesh.filters.dialects import MAX_NESTING
from rabbitmesh.resources.loader import ManifestError, load_text

EVENT = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# -- CloudEvents codec ------------------------------------------------------------------------


def test_amqp_traceparent_bytes_that_are_not_utf8_are_ignored() -> None:
    """Was: UnicodeDecodeError escaped decode_amqp."""
    event = decode_amqp({**EVENT, "traceparent": b"\xff"}, b"", None)
    assert event.trace is None


@pytest.mark.parametrize(
    ("traceparent", "tracestate", "expected"),
    [
        (TRACEPARENT + "\r\nx-injected: 1", None, None),
        (TRACEPARENT, "a=b\r\nx-injected: 1", {"traceparent": TRACEPARENT}),
        (TRACEPARENT, "a=\u00e9", {"traceparent": TRACEPARENT}),
        (TRACEPARENT, "a=b,c=d", {"traceparent": TRACEPARENT, "tracestate": "a=b,c=d"}),
    ],
)
def test_amqp_trace_headers_that_http_cannot_carry_are_dropped(
    traceparent: str, tracestate: str | None, expected: dict[str, str] | None
) -> None:
    """Was: CR/LF in an AMQP trace header went on into the HTTP delivery's headers."""
    headers = {**EVENT, "traceparent": traceparent}
    if tracestate is not None:
        headers["tracestate"] = tracestate
    event = decode_amqp(headers, b"", None)
    assert event.trace == expected
    http_headers, _ = encode_binary(event)
    assert all("\n" not in v and "\r" not in v for v in http_headers.values())


@pytest.mark.parametrize(
    "value",
    [
        datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
    ],
)
def test_amqp_timestamps_out_of_range_are_invalid_events(value: datetime) -> None:
    """Was: OverflowError escaped decode_amqp."""
    with pytest.raises(InvalidEvent, match="out of range"):
        decode_amqp({**EVENT, "ce-time": value}, b"", None)
    edge = decode_amqp({**EVENT, "ce-time": datetime.min.replace(tzinfo=UTC)}, b"", None)
    assert edge.attributes["time"] == "0001-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "Application/CloudEvents-Batch+JSON; charset=utf-8",
        "application/cloudevents+avro",
    ],
)
def test_datacontenttype_that_is_an_event_format_is_rejected(content_type: str) -> None:
    """Was: accepted, then read back from AMQP (or by a subscriber) as the inner event."""
    inner = {"specversion": "1.0", "id": "inner", "source": "s", "type": "other"}
    outer = {**{k[3:]: v for k, v in EVENT.items()}, "datacontenttype": content_type}
    body = orjson.dumps({**outer, "data": inner})
    with pytest.raises(InvalidEvent, match="event format"):
        decode_request({"content-type": "application/cloudevents+json"}, body)


def test_lookalike_datacontenttype_still_round_trips() -> None:
    attrs = {k[3:]: v for k, v in EVENT.items()}
    event = CloudEvent({**attrs, "datacontenttype": "application/cloudeventsish"}, b"x")
    parts = encode_amqp(event)
    assert decode_amqp(parts.headers, parts.body, parts.content_type).attributes == (
        event.attributes
    )


# -- CESQL LIKE -------------------------------------------------------------------------------


def test_like_with_many_wildcards_does_not_backtrack() -> None:
    """Was: `%a%a%a%b` against 800 characters took 34 s (a backtracking `.*a.*a.*a.*b`)."""
    expression = compile_expression("x LIKE '%a%a%a%a%a%a%a%a%b'")
    start = time.thread_time()
    assert expression.evaluate({"x": "a" * 5000}) == (False, [])
    assert expression.evaluate({"x": "a" * 5000 + "b"}) == (True, [])
    assert time.thread_time() - start < 0.5


def _like_regex(pattern: str) -> str:
    """The LIKE semantics as one (slow but obviously right) regex."""
    import re

    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return "".join(out)


@settings(max_examples=500, deadline=None)
@given(
    # A CESQL string cannot end with a lone backslash (it would escape the closing quote).
    pattern=st.text(alphabet="ab%_\\\n", max_size=10).filter(lambda p: not p.endswith("\\")),
    value=st.text(alphabet="ab%_\\\n", max_size=12),
)
def test_like_agrees_with_a_regex(pattern: str, value: str) -> None:
    import re

    expected = re.fullmatch(_like_regex(pattern), value, re.DOTALL) is not None
    source = "x LIKE '" + pattern.replace("'", "''") + "'"
    assert compile_expression(source).evaluate({"x": value}) == (expected, [])


# -- filters ----------------------------------------------------------------------------------


def _nested(kind: str, depth: int) -> dict[str, object]:
    node: dict[str, object] = {"exact": {"type": "t"}}
    for _ in range(depth):
        node = {"not": node} if kind == "not" else {kind: [node, {"exact": {"id": "1"}}]}
    return node


@pytest.mark.parametrize("kind", ["all", "any", "not"])
def test_filters_nested_too_deeply_are_a_filter_error(kind: str) -> None:
    """Was: RecursionError from a few hundred levels of all/any/not."""
    compile_trigger_filter(None, [_nested(kind, MAX_NESTING)])
    for depth in (MAX_NESTING + 1, 5000):
        with pytest.raises(FilterError, match="nested more than"):
            compile_trigger_filter(None, [_nested(kind, depth)])


# -- manifests --------------------------------------------------------------------------------

BROKER = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n"


def _bomb(levels: int) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "bomb:\n" + "".join(f"  {line}\n" for line in lines)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # Was: 100 s and a message of 3 * 10**9 characters (str() of the expanded name).
        (_bomb(8) + BROKER.format(name="*l8"), "aliases expand the document"),
        (_bomb(8) + BROKER.format(name="b") + "spec: {config: *l8}\n", "aliases expand"),
        # Was: RecursionError (filters, then pydantic) on a self-referencing alias.
        (BROKER.format(name="b") + "spec: &s {config: *s}\n", "refers to a node that contains"),
        # Was: RecursionError in PyYAML's composer.
        ("[" * 5000 + "]" * 5000, "nested more than 100 levels"),
        ("".join(" " * i + "a:\n" for i in range(1, 2000)), "nested more than 100 levels"),
        # Was: ValueError, IndexError, AttributeError, KeyError from PyYAML's constructors.
        (BROKER.format(name="b") + "x: " + "1" * 5000 + "\n", "'1111"),
        (BROKER.format(name="b") + "x: !!int nope\n", "'nope' is not a valid int"),
        (BROKER.format(name="b") + "x: !!int ''\n", "'' is not a valid int"),
        (BROKER.format(name="b") + "x: !!float 1e\n", "'1e' is not a valid float"),
        (BROKER.format(name="b") + "x: !!bool nope\n", "'nope' is not a valid bool"),
        # Was: ValueError from PyYAML's scanner (an escape beyond Unicode).
        (BROKER.format(name="b") + 'x: "\\U00110000"\n', "chr() arg not in range"),
    ],
)
def test_hostile_yaml_is_a_manifest_error(text: str, needle: str) -> None:
    start = time.thread_time()
    with pytest.raises(ManifestError) as raised:
        load_text(text, "m.yaml")
    assert time.thread_time() - start < 2.0
    assert needle in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        'apiVersion: eventing.knative.dev/v1\nkind: "Bro\\nker"\nmetadata: {name: "a\\nb"}\n',
        "apiVersion: v1\nkind: Broker\na: \x00\n",  # PyYAML's ReaderError text has a newline
        'apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: "a\\u2028b"}\n',
    ],
)
def test_manifest_errors_are_one_line(text: str) -> None:
    """Was: a kind, name or YAML error with a line break made a multi-line error."""
    with pytest.raises(ManifestError) as raised:
        load_text(text, "m.yaml")
    assert len(str(raised.value).splitlines()) == 1


def test_yaml_only_values_load_as_json_would() -> None:
    """Was: `2024-01-01` became a date that string fields rejected (and `2001-13-01` a
    ValueError); `!!binary` became bytes that resource.dump() could not serialise."""
    text = BROKER.format(name="b") + (
        "  annotations: {deployed: 2024-01-01, odd: 2001-13-01, at: 2001-12-14t21:59:43.1-05:00}\n"
        "  ownerReferences: [{bytes: !!binary '/w==', set: !!set {a}}]\n"
    )
    (broker,) = load_text(text, "m.yaml")
    assert broker.metadata.annotations == {
        "deployed": "2024-01-01",
        "odd": "2001-13-01",
        "at": "2001-12-14t21:59:43.1-05:00",
    }
    assert broker.metadata.owner_references == [{"bytes": "/w==", "set": {"a": None}}]
    orjson.dumps(broker.dump())


def test_reasonable_anchors_still_load() -> None:
    text = (
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n"
        "spec:\n  broker: b\n  subscriber: &sub {uri: 'http://x/'}\n"
        "  delivery: {deadLetterSink: *sub}\n"
    )
    (trigger,) = load_text(text, "m.yaml")
    assert trigger.spec.delivery.dead_letter_sink.uri == "http://x/"
