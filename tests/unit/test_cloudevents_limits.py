"""The codec's limits (issue 11): JSON depth, batch length counted before validation, and
attributes that must fit AMQP short strings."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitmesh.cloudevents import InvalidEvent, OverLimit, decode_request, validate
from rabbitmesh.cloudevents.jsonformat import batch_items, loads, text_too_deep, too_deep

BATCH = {"content-type": "application/cloudevents-batch+json"}
STRUCTURED = {"content-type": "application/cloudevents+json"}


def binary(content_type: str | None = "application/json") -> dict[str, str]:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}
    if content_type is not None:
        headers["content-type"] = content_type
    return headers


def event(**extra: object) -> dict[str, object]:
    return {"specversion": "1.0", "id": "1", "source": "s", "type": "t", **extra}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [1, 2, 63, 64, 65, 1000])
def test_binary_json_data_is_limited_to_64_levels(depth):
    if depth <= 64:
        (ev,) = decode_request(binary(), nested(depth))
        assert ev.data == nested(depth)
    else:
        with pytest.raises(InvalidEvent, match="data: JSON nested deeper than the limit of 64"):
            decode_request(binary(), nested(depth))


def test_the_limit_is_a_parameter_and_applies_to_json_content_types_only():
    with pytest.raises(InvalidEvent, match="limit of 8 levels"):
        decode_request(binary("text/json"), nested(9), max_depth=8)
    decode_request(binary("application/octet-stream"), nested(1000))
    with pytest.raises(InvalidEvent, match="limit of 64"):  # broken JSON, still too deep
        decode_request(binary(), b"[" * 1000)
    decode_request(binary(), b'["' + b"[" * 1000 + b'"]')  # brackets inside a string


def test_structured_events_count_the_envelope():
    body = orjson.dumps(event(data=0)).replace(b'"data":0', b'"data":' + nested(63))
    decode_request(STRUCTURED, body)
    deeper = orjson.dumps(event(data=0)).replace(b'"data":0', b'"data":' + nested(64))
    with pytest.raises(InvalidEvent, match="limit of 64 levels"):
        decode_request(STRUCTURED, deeper)
    beyond_orjson = orjson.dumps(event(data=0)).replace(b'"data":0', b'"data":' + nested(2000))
    with pytest.raises(InvalidEvent, match="limit of 64 levels"):
        decode_request(STRUCTURED, beyond_orjson)


def test_batches_count_the_array():
    item = orjson.dumps(event(data=0))
    ok = b"[" + item.replace(b'"data":0', b'"data":' + nested(62)) + b"]"
    assert len(decode_request(BATCH, ok)) == 1
    deep = b"[" + item.replace(b'"data":0', b'"data":' + nested(63)) + b"]"
    with pytest.raises(InvalidEvent, match="limit of 64 levels"):
        decode_request(BATCH, deep)


@given(st.recursive(st.integers() | st.text(max_size=3), lambda c: st.lists(c, max_size=3)))
@settings(max_examples=200, deadline=None)
def test_too_deep_agrees_with_a_recursive_count(value):
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    for limit in range(0, 6):
        assert too_deep(value, limit) == (depth(value) > limit)


def test_a_long_batch_is_refused_before_its_events_are_validated():
    # Items 1001 and beyond are never parsed: the body may even be broken past them.
    body = orjson.dumps([event(id=str(i)) for i in range(1001)])[:-1] + b", {broken"
    with pytest.raises(OverLimit, match="exceeds the limit of 1000 events"):
        decode_request(BATCH, body, max_events=1000)
    # ...and invalid events before the limit are not even looked at.
    invalid = orjson.dumps([{"not": "an event"}] * 2000)
    with pytest.raises(OverLimit):
        decode_request(BATCH, invalid, max_events=1000)
    assert len(decode_request(BATCH, orjson.dumps([event()] * 1000), max_events=1000)) == 1000


def test_refusing_a_4_mib_batch_of_70000_events_is_cheap():
    body = orjson.dumps([event(id=str(i)) for i in range(70_000)])
    started = time.process_time()
    with pytest.raises(OverLimit):
        decode_request(BATCH, body, max_events=1000)
    # Validating all 70,000 took ~0.45 s; counting to 1001 takes ~2 ms (generous bound).
    assert time.process_time() - started < 0.1


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b" [ 1 , 2 ] ",
        b'[[1],{},"x"]',
        b"[1,]",
        b"[1 2]",
        b"[1]x",
        b"{}",
        b"[",
        b"",
        b"[NaN]",
        b"[1e400]",
        b"[12345678901234567890123]",
        b'["\\u00e9"]',
        b"[1]\n",
    ],
)
def test_batch_items_parse_as_loads_does(body):
    try:
        expected = loads(body)
    except InvalidEvent:
        expected = InvalidEvent
    try:
        got = batch_items(body, None, 64)
    except InvalidEvent:
        got = InvalidEvent
    if expected is not InvalidEvent and type(expected) is not list:
        assert got is InvalidEvent  # a batch must be an array
    else:
        assert got == expected


@pytest.mark.parametrize("attribute", ["id", "datacontenttype"])
def test_amqp_short_string_attributes_are_limited_to_255_bytes(attribute):
    validate({**event(), attribute: "a" * 255})
    with pytest.raises(InvalidEvent, match=f"'{attribute}' is 256 bytes; at most 255"):
        validate({**event(), attribute: "a" * 256})
    with pytest.raises(InvalidEvent, match=f"'{attribute}' is 258 bytes"):
        validate({**event(), attribute: "é" * 129})  # 129 characters, 258 bytes


JSON_VALUES = st.recursive(
    st.none() | st.integers(-1000, 1000) | st.text(alphabet='[]{}"\\ab,:\n', max_size=6),
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.text('[]{}"\\k', max_size=3), c, max_size=3)
    ),
    max_leaves=30,
)


def reference_depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((reference_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((reference_depth(x) for x in v.values()), default=0)
    return 0


@given(JSON_VALUES, st.integers(min_value=1, max_value=7), st.integers(min_value=0, max_value=6))
@settings(max_examples=400, deadline=None)
def test_text_too_deep_reads_the_depth_from_the_bytes(value, chunk, limit):
    # Tiny chunks put every boundary (inside strings, between backslashes) to the test.
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 if chunk % 2 else 0)
    assert text_too_deep(text, limit, chunk=chunk) == (reference_depth(value) > limit)


def test_text_too_deep_is_cheap_on_a_worst_case_body():
    body = (b"[" * 64 + b"]" * 64) * (4_000_000 // 128)
    started = time.process_time()
    assert not text_too_deep(body, 64)
    assert text_too_deep(b"[" + body + b"]", 64)
    assert time.process_time() - started < 2.0  # ~0.3 s of C work on a busy machine


def test_a_refused_batch_is_decoded_only_as_far_as_its_items_are_counted():
    """Items past the limit are never decoded: bytes that are not UTF-8 after item 1,001 do
    not turn the 413 into a 400, and counting a 4 MiB batch costs what its first items do."""
    items = b",".join(orjson.dumps(event(id=str(i))) for i in range(3000))  # ~170 kB
    body = b"[" + items + b"," + b'"\xff\xfe"' * 1_000_000 + b"]"
    with pytest.raises(OverLimit):
        batch_items(body, 1000, 64)
    with pytest.raises(InvalidEvent, match="can't decode byte 0xff in position 1"):
        batch_items(body, None, 64)  # without a limit the whole body is decoded, and refused


@pytest.mark.parametrize("offset", [-3, -2, -1, 0, 1, 2])
def test_batch_items_cut_at_the_decoded_prefix_parse_whole(offset):
    """A number, a string with multi-byte characters and whitespace that straddle the point
    where decoding stops and resumes (64 KiB) parse as the whole body does."""
    pad = 64 * 1024 - 1 + offset  # bytes before the straddling item
    for tail in (b"1234567890", '"é中€"'.encode(), b"   ", b"true"):
        body = b"[" + b'"' + b"a" * (pad - 3) + b'",' + tail + b"]"
        if tail == b"   ":
            body = b"[" + b'"' + b"a" * (pad - 3) + b'"' + tail + b"]"
        assert batch_items(body, None, 64) == orjson.loads(body)


def test_a_number_out_of_range_is_refused_next_to_a_huge_integer():
    """A huge integer switches to the stdlib parser, which must refuse 1e999 as orjson does
    (it turned into Infinity, which no JSON subscriber can read)."""
    body = (
        b'{"specversion":"1.0","id":"1","source":"s","type":"t",'
        b'"data":[1e999,12345678901234567890123]}'
    )
    with pytest.raises(InvalidEvent, match="1e999 is out of range"):
        decode_request(STRUCTURED, body)
    with pytest.raises(InvalidEvent, match="out of range"):
        loads(b"[1e999, 12345678901234567890123]")
    assert loads(b"[1.5, 12345678901234567890123]") == [1.5, 12345678901234567890123]


def test_a_charset_whose_codec_raises_unicodeerror_is_a_400():
    """The idna codec raises UnicodeError (not UnicodeEncodeError) for a long label: 400."""
    body = orjson.dumps(event(datacontenttype="text/plain; charset=idna", data="a" * 100))
    with pytest.raises(InvalidEvent, match="cannot be encoded as idna"):
        decode_request(STRUCTURED, body)
