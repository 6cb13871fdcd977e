"""Fuzzing the CloudEvents codec: hostile headers, bodies and content types.

The rule for every decoder: it returns events that are valid and survive a re-encoding, or
raises InvalidEvent (NotACloudEvent is one); nothing else escapes, and no input of under
64 KiB costs more than a few milliseconds (a catastrophic regex would cost seconds).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from rabbitmesh.cloudevents import (
    CloudEvent,
    InvalidEvent,
    decode_amqp,
    decode_request,
    decode_response,
    encode_amqp,
    encode_batch,
    encode_binary,
    encode_structured,
    validate,
)
from rabbitmesh.cloudevents.jsonformat import loads
from tests.fuzz.conftest import counted, fuzz_settings, within_cpu
from tests.fuzz.strategies import (
    BODIES,
    CONTENT_TYPES,
    HEADER_NAMES,
    HEADER_VALUES,
    NASTY_TEXT,
    PRINTABLE_TEXT,
    dumps_json,
    header_dicts,
    long_text,
    structured_objects,
)

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: CPU time one decode may take for an input under 64 KiB.
DECODE_BOUND = 0.05


def _header_string(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def check_event(event: CloudEvent) -> None:
    """A decoded event is valid and survives binary HTTP, AMQP and JSON re-encoding."""
    assert isinstance(event, CloudEvent)
    validate(event.attributes)
    assert event.data is None or type(event.data) is bytes

    headers, body = encode_binary(event)
    for name, value in headers.items():
        # What HTTP can carry: no controls (CR/LF would split or smuggle headers).
        assert name.isascii() and name.isprintable(), name
        assert _CONTROL.search(value) is None, f"{name}: {value!r}"
        value.encode("utf-8")
    # Round trips test fidelity: no depth limit here (an AMQP message may nest deeper than
    # ingress accepts; tests/unit/test_cloudevents_limits.py covers the limit).
    (again,) = decode_request(headers, body, max_depth=None)
    assert again.attributes == {k: _header_string(v) for k, v in event.attributes.items()}
    assert again.data == (event.data or None)
    assert again.trace == event.trace

    parts = encode_amqp(event)
    back = decode_amqp(parts.headers, parts.body, parts.content_type)
    assert back.attributes == event.attributes
    assert back.data == (event.data or None)

    headers, body = encode_structured(event)
    (again,) = decode_request(headers, body, max_depth=None)
    assert again.attributes == event.attributes
    # JSON data is re-serialised (compact form), everything else stays byte-exact.
    if event.data is not None and again.data != event.data:
        assert loads(again.data or b"null") == loads(event.data)


def decode_or_reject(decode: Any, *args: Any) -> list[CloudEvent]:
    size = sum(len(a) for a in args if isinstance(a, bytes))
    size += sum(
        len(str(k)) + len(str(v)) for a in args if hasattr(a, "items") for k, v in a.items()
    )
    bound = DECODE_BOUND if size < 64 * 1024 else DECODE_BOUND * (size / (64 * 1024))

    def body() -> Any:
        try:
            return decode(*args)
        except InvalidEvent as e:
            message = str(e)
            assert message and "\n" not in message
            return None

    result = within_cpu(bound, f"{decode.__name__} of {size} bytes", body)
    if result is None:
        return []
    return result if isinstance(result, list) else [result]


@fuzz_settings("codec")
@given(headers=header_dicts(), body=BODIES, content_type=st.sampled_from([None, *CONTENT_TYPES]))
@counted
def test_decode_request_accepts_valid_events_or_raises_invalid_event(
    headers: dict[str, str], body: bytes, content_type: str | None
) -> None:
    if content_type is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = content_type
    for event in decode_or_reject(decode_request, headers, body):
        check_event(event)


@fuzz_settings("codec", light=True)
@given(
    pairs=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12),
    body=BODIES,
)
@counted
def test_decode_request_with_repeated_headers(pairs: list[tuple[str, str]], body: bytes) -> None:
    """aiohttp hands over a multidict: the same header may come twice, in any case."""
    headers = CIMultiDict(pairs)
    for event in decode_or_reject(decode_request, headers, body):
        check_event(event)


@fuzz_settings("codec", light=True)
@given(
    status=st.one_of(st.sampled_from([200, 201, 202, 204, 299, 300, 404, 500]), st.integers()),
    headers=header_dicts(),
    body=BODIES,
)
@counted
def test_decode_response_returns_none_an_event_or_raises_invalid_event(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    events = decode_or_reject(decode_response, status, headers, body)
    if not 200 <= status < 300:
        assert events == []
    for event in events:
        check_event(event)


@fuzz_settings("codec")
@given(
    name=st.sampled_from(["ce-id", "ce-source", "ce-type", "ce-subject", "ce-ext1", "ce-time"]),
    value=st.one_of(long_text(70_000), NASTY_TEXT),
    mode=st.sampled_from(["binary", "structured"]),
)
@counted
def test_long_attribute_values_decode_in_bounded_time(name: str, value: str, mode: str) -> None:
    """Very long values in every attribute (regex checks run over them) stay cheap."""
    attribute = name[3:]
    if mode == "binary":
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/s",
            "ce-type": "t",
            name: value,
        }
        args: tuple[Any, ...] = (headers, b"")
    else:
        obj = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", attribute: value}
        try:
            body = orjson.dumps(obj)
        except TypeError:  # a lone surrogate: orjson refuses, and so would any sender
            return
        args = ({"content-type": "application/cloudevents+json"}, body)
    for event in decode_or_reject(decode_request, *args):
        check_event(event)


@fuzz_settings("codec")
@given(
    value=st.one_of(
        st.sampled_from(
            ["https://" + "a" * 70_000 + " ", "a:" + "/" * 70_000 + "%", "a" * 70_000 + ":"]
        ),
        st.tuples(st.sampled_from(["a:", "//", "/", "a"]), st.text(max_size=3)).map(
            lambda t: t[0] + t[1] * 20_000
        ),
    ),
    attribute=st.sampled_from(["dataschema", "source", "time", "schemaurl"]),
    specversion=st.sampled_from(["1.0", "0.3"]),
)
@counted
def test_uri_and_time_checks_do_not_backtrack(value: str, attribute: str, specversion: str) -> None:
    attributes = {"specversion": specversion, "id": "1", "source": "/s", "type": "t"}
    attributes[attribute] = value

    def body() -> None:
        try:
            validate(attributes)
        except InvalidEvent as e:
            assert "\n" not in str(e)

    within_cpu(DECODE_BOUND * 4, f"validate({attribute} of {len(value)} chars)", body)


# -- AMQP -------------------------------------------------------------------------------------

AMQP_VALUES = st.one_of(
    HEADER_VALUES,
    PRINTABLE_TEXT.map(str.encode),
    st.binary(max_size=16),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.floats(),
    st.decimals(allow_nan=True, places=None).filter(lambda d: len(str(d)) < 200),
    st.sampled_from(
        [
            datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
        ]
    ),
    st.datetimes(
        timezones=st.one_of(
            st.none(),
            st.just(UTC),
            st.integers(-23, 23).map(lambda h: timezone(timedelta(hours=h))),
        )
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
AMQP_NAMES = st.one_of(
    HEADER_NAMES,
    st.sampled_from(["cloudEvents:specversion", "cloudEvents_id", "CE-TYPE", "x-death"]),
)


def valid_amqp_headers() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "ce-specversion": st.sampled_from(["1.0", "0.3", b"1.0"]),
            "ce-id": st.one_of(PRINTABLE_TEXT, PRINTABLE_TEXT.map(str.encode)),
            "ce-source": PRINTABLE_TEXT,
            "ce-type": PRINTABLE_TEXT,
        }
    )


@fuzz_settings("amqp")
@given(
    headers=st.one_of(
        st.none(),
        st.dictionaries(AMQP_NAMES, AMQP_VALUES, max_size=10),
        st.tuples(valid_amqp_headers(), st.dictionaries(AMQP_NAMES, AMQP_VALUES, max_size=6)).map(
            lambda t: {**t[0], **t[1]}
        ),
    ),
    body=BODIES,
    content_type=st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), NASTY_TEXT),
)
@counted
def test_decode_amqp_accepts_valid_events_or_raises_invalid_event(
    headers: dict[str, Any] | None, body: bytes, content_type: str | None
) -> None:
    for event in decode_or_reject(decode_amqp, headers, body, content_type):
        check_event(event)


@fuzz_settings("codec", light=True)
@given(body=st.one_of(st.lists(structured_objects(), max_size=5).map(dumps_json), BODIES))
@counted
def test_batches_reencode_as_batches(body: bytes) -> None:
    """A decoded batch re-encodes (encode_batch) to a batch decoding to the same events."""
    events = decode_or_reject(
        decode_request, {"content-type": "application/cloudevents-batch+json"}, body
    )
    for event in events:
        check_event(event)
    if events:
        batch_headers, batch_body = encode_batch(events)
        again = decode_request(batch_headers, batch_body)
        assert [e.attributes for e in again] == [e.attributes for e in events]
