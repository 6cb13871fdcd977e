"""The RabbitMQ (AMQP 0-9-1) binding: typed headers, content_type, round trips, errors."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import decode as amqp_decode
from pamqp import encode as amqp_encode

from rabbitmesh.cloudevents import (
    AmqpParts,
    CloudEvent,
    InvalidEvent,
    NotACloudEvent,
    decode_amqp,
    decode_request,
    encode_amqp,
    encode_binary,
    encode_structured,
)
from tests.support.strategies import events

BASE = {
    "specversion": "1.0",
    "id": "A234-1234-1234",
    "source": "/mycontext",
    "type": "com.example.someevent",
}


def ce_headers(**extra: object) -> dict[str, object]:
    headers: dict[str, object] = {f"ce-{k}": v for k, v in BASE.items()}
    headers.update(extra)
    return headers


def invalid(headers: dict[str, object] | None, body: bytes = b"", ct: str | None = None) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_amqp(headers, body, ct)
    return str(info.value)


def test_encode_amqp() -> None:
    event = CloudEvent(
        {
            **BASE,
            "time": "2018-04-05T17:31:00Z",
            "datacontenttype": "application/json",
            "comexampleothervalue": 5,
            "flag": True,
        },
        b'{"a":1}',
    )
    parts = encode_amqp(event)
    assert parts == AmqpParts(
        headers={
            "ce-specversion": "1.0",
            "ce-id": "A234-1234-1234",
            "ce-source": "/mycontext",
            "ce-type": "com.example.someevent",
            "ce-time": "2018-04-05T17:31:00Z",
            "ce-comexampleothervalue": 5,  # types kept
            "ce-flag": True,
        },
        body=b'{"a":1}',
        content_type="application/json",
        message_id="A234-1234-1234",
        delivery_mode=2,  # persistent
    )


def test_encode_amqp_without_data_or_content_type() -> None:
    parts = encode_amqp(CloudEvent(dict(BASE)))
    assert parts.body == b"" and parts.content_type is None


def test_decode_amqp_keeps_types_and_ignores_other_headers() -> None:
    headers = ce_headers(
        **{
            "ce-count": 7,
            "ce-flag": False,
            "x-rabbitmesh-attempt": 3,
            "x-death": [{"count": 1, "reason": "expired"}],
            "traceparent": "00-abc",
        }
    )
    event = decode_amqp(headers, b"payload", "text/plain")
    assert event.attributes == {**BASE, "count": 7, "flag": False, "datacontenttype": "text/plain"}
    assert event.data == b"payload"


def test_decode_amqp_converts_wire_types() -> None:
    headers = ce_headers(
        **{
            "ce-id": b"bytes-id",
            "ce-time": datetime(2018, 4, 5, 17, 31, tzinfo=UTC),
            "ce-local": datetime(2018, 4, 5, 19, 31, 0, 500, tzinfo=timezone(timedelta(hours=2))),
            "ce-naive": datetime(2018, 4, 5, 17, 31),
            "ce-amount": Decimal("12.50"),
            "ce-unset": None,
        }
    )
    event = decode_amqp(headers, b"", None)
    assert event.id == "bytes-id"
    assert event.attributes["time"] == "2018-04-05T17:31:00Z"
    assert event.attributes["local"] == "2018-04-05T17:31:00.000500Z"
    assert event.attributes["naive"] == "2018-04-05T17:31:00Z"
    assert event.attributes["amount"] == "12.50"
    assert "unset" not in event.attributes
    assert event.data is None  # empty body: no data


def test_decode_amqp_prefix_is_case_insensitive() -> None:
    headers = {"CE-SpecVersion": "1.0", "Ce-Id": "1", "ce-SOURCE": "/s", "cE-type": "t"}
    event = decode_amqp(headers, b"", None)
    assert event.attributes == {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}


def test_decode_amqp_accepts_amqp10_binding_prefixes() -> None:
    headers = {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": "1",
        "cloudEvents_source": "/s",
        "cloudEvents:type": "t",
    }
    assert decode_amqp(headers, b"", None).attributes == {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
    }


def test_decode_amqp_body_byte_exact() -> None:
    body = os.urandom(1000)
    assert decode_amqp(ce_headers(), body, "application/octet-stream").data == body


def test_decode_amqp_datacontenttype_header_without_property() -> None:
    event = decode_amqp(ce_headers(**{"ce-datacontenttype": "text/plain"}), b"x", None)
    assert event.datacontenttype == "text/plain"


def test_decode_amqp_structured_message() -> None:
    body = orjson.dumps({**BASE, "data": {"k": "v"}})
    event = decode_amqp({"x-death": []}, body, "application/cloudevents+json; charset=utf-8")
    assert event.id == BASE["id"] and event.data == b'{"k":"v"}'


def test_decode_amqp_errors() -> None:
    assert invalid({"x-other": "1"}) == "not a CloudEvent: no 'ce-specversion' header"
    with pytest.raises(NotACloudEvent):
        decode_amqp(None, b"x", "text/plain")
    headers = ce_headers()
    del headers["ce-id"]
    assert invalid(headers) == "attribute 'id' is missing"
    assert invalid(ce_headers(**{"ce-specversion": "2.0"})) == "unknown specversion '2.0'"
    assert invalid(ce_headers(**{"ce-ext": 1.5})) == (
        "header 'ce-ext': unsupported value type float "
        "(CloudEvents attributes are strings, integers or booleans)"
    )
    assert invalid(ce_headers(**{"ce-ext": [1]})).startswith(
        "header 'ce-ext': unsupported value type list"
    )
    assert (
        invalid(ce_headers(**{"ce-ext": b"\xff"})) == "header 'ce-ext': bytes are not valid UTF-8"
    )
    assert invalid(ce_headers(**{"ce-big": 2**40})) == (
        "attribute 'big': integer 1099511627776 is outside the signed 32-bit range"
    )
    assert (
        invalid(ce_headers(**{"CE-ID": "again"}))
        == "attribute 'id' appears in more than one header"
    )
    assert invalid(ce_headers(**{"cloudEvents:id": "again"})) == (
        "attribute 'id' appears in more than one header"
    )
    assert invalid(ce_headers(**{"ce-datacontenttype": "a/b"}), ct="text/plain") == (
        "datacontenttype is given both as content_type and as a header"
    )
    assert invalid(ce_headers(**{"ce-Bad_Name": "x"})) == (
        "extension name 'bad_name' must be lowercase letters and digits"
    )
    assert invalid(ce_headers(), b"[]", "application/cloudevents-batch+json") == (
        "a message must hold a single event, not a batch"
    )
    assert invalid(ce_headers(), b"{}", "application/cloudevents+avro") == (
        "unsupported event format 'application/cloudevents+avro'"
    )
    assert invalid(ce_headers(**{"ce-time": "2018-04-05T17:31"})) == (
        "attribute 'time' is not an RFC 3339 timestamp: '2018-04-05T17:31'"
    )


def test_headers_survive_the_amqp_field_table_codec() -> None:
    event = CloudEvent(
        {**BASE, "n": -(2**31), "m": 2**31 - 1, "small": 3, "yes": True, "s": "Euro \u20ac"},
        b"x",
    )
    parts = encode_amqp(event)
    _, wire_headers = amqp_decode.field_table(amqp_encode.field_table(parts.headers))
    back = decode_amqp(wire_headers, parts.body, parts.content_type)
    assert back == event


def test_http_to_amqp_to_http_is_lossless() -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "ce-subject": "Euro%20%E2%82%AC%20%F0%9F%98%80",
        "ce-knativearrivaltime": "2024-05-01T12:00:00.123Z",
        "content-type": "text/plain; charset=utf-8",
    }
    event = decode_request(headers, "h\u00e9".encode())[0]
    parts = encode_amqp(event)
    from_amqp = decode_amqp(parts.headers, parts.body, parts.content_type)
    assert from_amqp == event
    assert encode_binary(from_amqp) == (headers, "h\u00e9".encode())


# --- properties ---------------------------------------------------------------------------------

#: The content types the AMQP round trips draw from (the HTTP ones: tests/support/strategies.py).
AMQP_CONTENT_TYPES = st.sampled_from(["application/octet-stream", "text/plain", "a/b+json"])


@settings(max_examples=300, deadline=None)
@given(events(AMQP_CONTENT_TYPES))
def test_amqp_round_trip(event: CloudEvent) -> None:
    parts = encode_amqp(event)
    assert parts.message_id == event.id
    back = decode_amqp(parts.headers, parts.body, parts.content_type)
    assert back.attributes == event.attributes  # every attribute, types included
    assert back.data == event.data


@settings(max_examples=200, deadline=None)
@given(events(AMQP_CONTENT_TYPES))
def test_amqp_round_trip_through_the_wire_codec(event: CloudEvent) -> None:
    parts = encode_amqp(event)
    _, wire = amqp_decode.field_table(amqp_encode.field_table(parts.headers))
    assert decode_amqp(wire, parts.body, parts.content_type) == event


@settings(max_examples=200, deadline=None)
@given(events(AMQP_CONTENT_TYPES))
def test_structured_http_to_amqp_round_trip(event: CloudEvent) -> None:
    from_http = decode_request(*encode_structured(event))[0]
    if event.datacontenttype == "a/b+json" and event.data is not None:
        event = CloudEvent(event.attributes, from_http.data)  # JSON data: same value, normalised
    parts = encode_amqp(from_http)
    assert decode_amqp(parts.headers, parts.body, parts.content_type) == event
