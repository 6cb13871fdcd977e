"""The HTTP binding and JSON format: spec examples, round trips, and every error path."""

from __future__ import annotations

import base64
import json
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from rabbitmesh.cloudevents import (
    CloudEvent,
    InvalidEvent,
    NotACloudEvent,
    decode_request,
    decode_response,
    encode_batch,
    encode_binary,
    encode_structured,
    is_json_content_type,
)
from rabbitmesh.cloudevents.percent import needs_encoding, percent_decode, percent_encode
from tests.support.strategies import ce_text, events

STRUCTURED = {"content-type": "application/cloudevents+json; charset=utf-8"}
BATCH = {"content-type": "application/cloudevents-batch+json; charset=utf-8"}


def binary_headers(**extra: str) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "com.example.someevent",
        "ce-id": "1234-1234-1234",
        "ce-source": "/mycontext/subcontext",
    }
    headers.update(extra)
    return headers


def one(headers: object, body: bytes) -> CloudEvent:
    events = decode_request(headers, body)  # type: ignore[arg-type]
    assert len(events) == 1
    return events[0]


def structured(obj: object) -> CloudEvent:
    return one(STRUCTURED, orjson.dumps(obj))


def invalid(headers: object, body: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_request(headers, body)  # type: ignore[arg-type]
    return str(info.value)


BASE = {
    "specversion": "1.0",
    "type": "com.example.someevent",
    "source": "/mycontext",
    "id": "A234-1234-1234",
}


# --- HTTP binding 1.0.2 §3.1.4 / §3.2.4 examples --------------------------------------------


def test_spec_binary_request_example() -> None:
    body = b'{\n    "appinfo": "data"\n}'
    headers = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "webhook.example.com"),
                ("ce-specversion", "1.0"),
                ("ce-type", "com.example.someevent"),
                ("ce-time", "2018-04-05T03:56:24Z"),
                ("ce-id", "1234-1234-1234"),
                ("ce-source", "/mycontext/subcontext"),
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
        )
    )
    event = one(headers, body)
    assert event.attributes == {
        "specversion": "1.0",
        "type": "com.example.someevent",
        "time": "2018-04-05T03:56:24Z",
        "id": "1234-1234-1234",
        "source": "/mycontext/subcontext",
        "datacontenttype": "application/json; charset=utf-8",
    }
    assert event.data == body  # verbatim, whitespace included


def test_spec_binary_response_example() -> None:
    headers = binary_headers(**{"ce-time": "2018-04-05T03:56:24Z"})
    headers["Content-Type"] = "application/json; charset=utf-8"
    event = decode_response(200, headers, b'{"a": 1}')
    assert event is not None
    assert event.id == "1234-1234-1234"
    assert event.data == b'{"a": 1}'


def test_spec_structured_request_example() -> None:
    body = b"""{
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "id" : "1",
        "data" : { "appinfoA" : "abc" }
    }"""
    event = one({"Content-Type": "application/cloudevents+json; charset=utf-8"}, body)
    assert event.type == "com.example.someevent"
    assert event.data == b'{"appinfoA":"abc"}'
    assert "datacontenttype" not in event.attributes  # absent stays absent


def test_spec_structured_response_example() -> None:
    event = decode_response(200, STRUCTURED, orjson.dumps({**BASE, "data": {"x": 1}}))
    assert event is not None and event.data == b'{"x":1}'


# --- percent-encoding (§3.1.3.2) --------------------------------------------------------------


def test_spec_percent_encoding_example() -> None:
    event = CloudEvent({**BASE, "subject": "Euro \u20ac \U0001f600"})
    headers, _ = encode_binary(event)
    assert headers["ce-subject"] == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert one(headers, b"").attributes["subject"] == "Euro \u20ac \U0001f600"


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (
            "plain-ascii_value.~!#$&'()*+,/:;<=>?@[\\]^`{|}",
            "plain-ascii_value.~!#$&'()*+,/:;<=>?@[\\]^`{|}",
        ),
        ("a b", "a%20b"),
        ('say "hi"', "say%20%22hi%22"),
        ("100%", "100%25"),
        ("caf\u00e9", "caf%C3%A9"),
        ("\u00a0", "%C2%A0"),
        ("", ""),
    ],
)
def test_percent_encode(raw: str, encoded: str) -> None:
    assert percent_encode(raw) == encoded
    assert needs_encoding(raw) == (raw != encoded)
    assert percent_decode(encoded) == raw


def test_percent_decode_accepts_lowercase_and_unneeded_escapes() -> None:
    assert percent_decode("caf%c3%a9") == "caf\u00e9"
    assert percent_decode("%41%42c") == "ABc"


def test_percent_decode_handles_quoted_strings() -> None:
    # older senders quote instead of escaping (RFC 7230 §3.2.6)
    assert percent_decode('"hello world"') == "hello world"
    assert percent_decode('"say \\"hi\\" \\\\ now"') == 'say "hi" \\ now'
    assert percent_decode('"a%20b"') == "a b"  # then one round of percent-decoding
    assert percent_decode('"') == '"'  # a lone quote is just a character
    assert percent_decode('"unterminated') == '"unterminated'


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("%G1", "invalid percent-encoding '%G1'"),
        ("abc%", "invalid percent-encoding '%'"),
        ("abc%4", "invalid percent-encoding '%4'"),
        ("% 1", "invalid percent-encoding '% 1'"),
        ("%+1", "invalid percent-encoding '%+1'"),
        ("%E2%82", "invalid percent-encoding: bytes b'\\xe2\\x82' are not UTF-8"),
        ("%C0%A0", "invalid percent-encoding: bytes b'\\xc0' are not UTF-8"),  # overlong space
        ("%FF", "invalid percent-encoding: bytes b'\\xff' are not UTF-8"),
        ('"a"b"', "malformed quoted string: unescaped '\"'"),
        ('"ab\\"', "malformed quoted string: dangling backslash"),
    ],
)
def test_bad_percent_encoding_names_the_header(value: str, problem: str) -> None:
    message = invalid(binary_headers(**{"ce-subject": value}), b"")
    assert message == f"header 'ce-subject': {problem}"


# --- binary mode ------------------------------------------------------------------------------


def test_binary_header_names_are_case_insensitive() -> None:
    headers = {
        "CE-SpecVersion": "1.0",
        "Ce-Id": "1",
        "ce-SOURCE": "/s",
        "CE-TYPE": "t",
        "Ce-MyExt": "5",
        "CONTENT-TYPE": "text/plain",
    }
    event = one(headers, b"hi")
    assert event.attributes == {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "myext": "5",  # binary values are strings
        "datacontenttype": "text/plain",
    }


def test_binary_without_content_type_or_body() -> None:
    event = one(binary_headers(), b"")
    assert "datacontenttype" not in event.attributes
    assert event.data is None


def test_binary_ignores_unrelated_headers() -> None:
    event = one(
        binary_headers(**{"Prefer": "reply", "Kn-Namespace": "default", "X-Ce-Id": "2"}), b""
    )
    assert event.id == "1234-1234-1234"
    assert set(event.attributes) == {"specversion", "type", "id", "source"}


def test_binary_body_kept_byte_exact() -> None:
    body = os.urandom(300)
    event = one(binary_headers(**{"content-type": "application/octet-stream"}), body)
    assert event.data == body


def test_binary_03_event() -> None:
    event = one(binary_headers(**{"ce-specversion": "0.3", "ce-schemaurl": "/schema"}), b"x")
    assert event.specversion == "0.3"
    assert event.attributes["schemaurl"] == "/schema"


def test_binary_requires_specversion() -> None:
    headers = binary_headers()
    del headers["ce-specversion"]
    with pytest.raises(NotACloudEvent, match="no 'ce-specversion' header"):
        decode_request(headers, b"")


def test_plain_post_is_not_a_cloudevent() -> None:
    with pytest.raises(NotACloudEvent) as info:
        decode_request({"Content-Type": "application/json"}, b'{"hello": "world"}')
    assert str(info.value) == (
        "not a CloudEvent: no 'ce-specversion' header and content type "
        "'application/json' is not a CloudEvents format"
    )


def test_duplicate_ce_headers_rejected() -> None:
    headers = CIMultiDict(binary_headers())
    headers.add("ce-id", "other")
    assert invalid(headers, b"") == "duplicate header 'ce-id'"
    assert invalid({**binary_headers(), "CE-ID": "x"}, b"") == "duplicate header 'ce-id'"


def test_duplicate_content_type_rejected() -> None:
    headers = CIMultiDict(binary_headers(**{"content-type": "text/plain"}))
    headers.add("Content-Type", "text/html")
    assert invalid(headers, b"") == "duplicate header 'content-type'"


def test_ce_datacontenttype_header_rejected_in_binary_mode() -> None:
    message = invalid(binary_headers(**{"ce-datacontenttype": "text/plain"}), b"")
    assert "'ce-datacontenttype' is not allowed in binary mode" in message


def test_binary_validation_errors_name_the_attribute() -> None:
    headers = binary_headers()
    del headers["ce-id"]
    assert invalid(headers, b"") == "attribute 'id' is missing"
    assert (
        invalid(binary_headers(**{"ce-source": ""}), b"") == "attribute 'source' must not be empty"
    )
    assert invalid(binary_headers(**{"ce-specversion": "2.0"}), b"") == "unknown specversion '2.0'"
    assert invalid(binary_headers(**{"ce-time": "yesterday"}), b"") == (
        "attribute 'time' is not an RFC 3339 timestamp: 'yesterday'"
    )
    assert invalid(binary_headers(**{"ce-foo_bar": "x"}), b"") == (
        "extension name 'foo_bar' must be lowercase letters and digits"
    )
    assert invalid(binary_headers(**{"ce-subject": "a%0Ab"}), b"") == (
        "attribute 'subject' contains U+000A, which CloudEvents strings do not allow"
    )


# --- content-mode detection ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "Application/CloudEvents+JSON",
        "application/cloudevents+json; charset=UTF-8",
        " application/cloudevents+json ;charset=utf-8",
    ],
)
def test_structured_detection(content_type: str) -> None:
    event = one({"Content-Type": content_type}, orjson.dumps(BASE))
    assert event.id == BASE["id"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+avro",
        "application/cloudevents+xml; charset=utf-8",
        "application/cloudevents",
        "application/cloudevents-batch+protobuf",
        "application/cloudevents-batch",
    ],
)
def test_unsupported_event_formats(content_type: str) -> None:
    mt = content_type.partition(";")[0].strip()
    assert invalid({"content-type": content_type}, b"{}") == f"unsupported event format {mt!r}"


def test_lookalike_media_type_is_binary() -> None:
    event = one(binary_headers(**{"content-type": "application/cloudeventsish"}), b"x")
    assert event.datacontenttype == "application/cloudeventsish"


def test_structured_mode_ignores_ce_headers() -> None:
    headers = {**STRUCTURED, "ce-id": "%ZZ", "ce-type": "other"}
    event = one(headers, orjson.dumps(BASE))
    assert event.id == BASE["id"] and event.type == BASE["type"]


# --- JSON format 1.0.2 §3.2 examples -----------------------------------------------------------

THRIFT = bytes(range(256))


def test_json_format_binary_data_example() -> None:
    obj = {
        **BASE,
        "time": "2018-04-05T17:31:00Z",
        "comexampleextension1": "value",
        "comexampleothervalue": 5,
        "datacontenttype": "application/vnd.apache.thrift.binary",
        "data_base64": base64.b64encode(THRIFT).decode(),
    }
    event = structured(obj)
    assert event.data == THRIFT
    assert event.attributes["comexampleothervalue"] == 5  # typed in JSON
    headers, body = encode_binary(event)
    assert headers == {
        "ce-specversion": "1.0",
        "ce-type": "com.example.someevent",
        "ce-source": "/mycontext",
        "ce-id": "A234-1234-1234",
        "ce-time": "2018-04-05T17:31:00Z",
        "ce-comexampleextension1": "value",
        "ce-comexampleothervalue": "5",
        "content-type": "application/vnd.apache.thrift.binary",
    }
    assert body == THRIFT


def test_json_format_xml_data_example() -> None:
    obj = {
        **BASE,
        "id": "B234-1234-1234",
        "unsetextension": None,
        "datacontenttype": "application/xml",
        "data": '<much wow="xml"/>',
    }
    event = structured(obj)
    assert "unsetextension" not in event.attributes
    headers, body = encode_binary(event)
    assert headers["content-type"] == "application/xml"
    assert body == b'<much wow="xml"/>'
    # and back to structured: the text is a JSON string again
    assert orjson.loads(encode_structured(event)[1])["data"] == '<much wow="xml"/>'


def test_json_format_json_data_example() -> None:
    obj = {
        **BASE,
        "subject": None,
        "datacontenttype": "application/json",
        "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True},
    }
    event = structured(obj)
    assert "subject" not in event.attributes
    assert orjson.loads(event.data or b"") == obj["data"]


def test_json_format_string_data_without_content_type_example() -> None:
    event = structured({**BASE, "data": "I'm just a string"})
    assert event.data == b'"I\'m just a string"'  # a JSON string literal, quoted
    assert "datacontenttype" not in event.attributes


def test_spec_md_example_event() -> None:
    obj = {
        "specversion": "1.0",
        "type": "com.github.pull_request.opened",
        "source": "https://github.com/cloudevents/spec/pull",
        "subject": "123",
        "id": "A234-1234-1234",
        "time": "2018-04-05T17:31:00Z",
        "comexampleextension1": "value",
        "comexampleothervalue": 5,
        "datacontenttype": "text/xml",
        "data": '<much wow="xml"/>',
    }
    event = structured(obj)
    assert event.data == b'<much wow="xml"/>'
    assert orjson.loads(encode_structured(event)[1]) == obj


# --- structured data handling -----------------------------------------------------------------


def test_explicit_null_data_is_a_json_null_payload() -> None:
    assert structured({**BASE, "data": None}).data == b"null"
    assert structured({**BASE, "datacontenttype": "application/json", "data": None}).data == b"null"
    assert structured({**BASE, "datacontenttype": "text/plain", "data": None}).data is None


def test_text_data_round_trips_exactly() -> None:
    text = "h\u00e9llo \u20ac \U0001f600\nline two"
    event = structured({**BASE, "datacontenttype": "text/plain", "data": text})
    assert event.data == text.encode()


def test_text_data_uses_the_declared_charset() -> None:
    ct = "text/plain; charset=ISO-8859-1"
    event = structured({**BASE, "datacontenttype": ct, "data": "caf\u00e9"})
    assert event.data == b"caf\xe9"
    assert orjson.loads(encode_structured(event)[1])["data"] == "caf\u00e9"
    message = invalid(STRUCTURED, orjson.dumps({**BASE, "datacontenttype": ct, "data": "\u20ac"}))
    assert message.startswith("member 'data' cannot be encoded as iso8859-1")


def test_non_string_data_with_non_json_content_type_is_serialised() -> None:
    event = structured({**BASE, "datacontenttype": "text/plain", "data": {"a": 1}})
    assert event.data == b'{"a":1}'


def test_json_suffix_types_keep_json_data() -> None:
    for ct in ("application/vnd.api+json", "text/json", "application/json; charset=utf-8"):
        event = structured({**BASE, "datacontenttype": ct, "data": "s"})
        assert event.data == b'"s"'


def test_null_data_base64_lets_data_through() -> None:
    assert structured({**BASE, "data": 1, "data_base64": None}).data == b"1"
    assert structured({**BASE, "data": None, "data_base64": "AAE="}).data == b"\x00\x01"


def test_huge_integers_in_data_survive() -> None:
    body = (
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t",'
        b'"data":{"n":123456789012345678901234567890,"neg":-9223372036854775809}}'
    )
    event = one(STRUCTURED, body)
    assert event.data == b'{"n":123456789012345678901234567890,"neg":-9223372036854775809}'
    out = encode_structured(event)[1]
    assert out.endswith(b'"data":{"n":123456789012345678901234567890,"neg":-9223372036854775809}}')


def test_03_structured_with_base64_encoding() -> None:
    obj = {
        **BASE,
        "specversion": "0.3",
        "datacontenttype": "application/octet-stream",
        "datacontentencoding": "base64",
        "schemaurl": "/schema",
        "data": base64.b64encode(b"\x00\xffraw").decode(),
    }
    event = structured(obj)
    assert event.data == b"\x00\xffraw"
    # the encoding describes the JSON member only; the bytes are now raw
    assert "datacontentencoding" not in event.attributes
    headers, body = encode_binary(event)
    assert body == b"\x00\xffraw" and "ce-datacontentencoding" not in headers
    # structured 0.3 output uses data + datacontentencoding, never data_base64
    out = orjson.loads(encode_structured(event)[1])
    assert out["datacontentencoding"] == "base64" and "data_base64" not in out
    assert structured(out) == event


def test_03_structured_json_data() -> None:
    event = structured({**BASE, "specversion": "0.3", "data": {"k": [1, 2]}})
    assert event.data == b'{"k":[1,2]}'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[]", "a structured event must be a JSON object, not array"),
        (b'"event"', "a structured event must be a JSON object, not str"),
        (b"NaN", "malformed JSON"),
    ],
)
def test_structured_body_errors(body: bytes, message: str) -> None:
    assert invalid(STRUCTURED, body).startswith(message)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            {**BASE, "data": "x", "data_base64": "eA=="},
            "an event cannot have both 'data' and 'data_base64'",
        ),
        ({**BASE, "data_base64": "not base64!"}, "member 'data_base64' is not valid base64"),
        ({**BASE, "data_base64": "eA"}, "member 'data_base64' is not valid base64"),
        ({**BASE, "data_base64": 5}, "member 'data_base64' must be a base64 string, not int"),
        ({**BASE, "ext": 1.5}, "attribute 'ext' must be a string, integer or boolean, not float"),
        (
            {**BASE, "ext": {"a": 1}},
            "attribute 'ext' must be a string, integer or boolean, not object",
        ),
        ({**BASE, "ext": [1]}, "attribute 'ext' must be a string, integer or boolean, not array"),
        ({**BASE, "id": 7}, "attribute 'id' must be a string, not int"),
        ({**BASE, "id": None}, "attribute 'id' is missing"),
        ({**BASE, "source": ""}, "attribute 'source' must not be empty"),
        ({**BASE, "specversion": "2.0"}, "unknown specversion '2.0'"),
        (
            {**BASE, "time": "2018-04-05 17:31"},
            "attribute 'time' is not an RFC 3339 timestamp: '2018-04-05 17:31'",
        ),
        ({**BASE, "Foo_Bar": "x"}, "extension name 'Foo_Bar' must be lowercase letters and digits"),
        (
            {**BASE, "big": 2**31},
            "attribute 'big': integer 2147483648 is outside the signed 32-bit range",
        ),
        (
            {**BASE, "specversion": "0.3", "data_base64": "eA=="},
            "member 'data_base64' is not defined in CloudEvents 0.3 "
            "(use 'data' with datacontentencoding 'base64')",
        ),
        (
            {**BASE, "specversion": "0.3", "datacontentencoding": "base64", "data": "!!"},
            "member 'data' is not valid base64",
        ),
        (
            {**BASE, "specversion": "0.3", "datacontentencoding": "base64", "data": {}},
            "member 'data' must be a base64 string, not object",
        ),
        (
            {**BASE, "specversion": "0.3", "datacontentencoding": "hex"},
            "attribute 'datacontentencoding' must be 'base64', got 'hex'",
        ),
    ],
)
def test_structured_event_errors(obj: dict[str, object], message: str) -> None:
    assert invalid(STRUCTURED, orjson.dumps(obj)) == message


# --- batches ------------------------------------------------------------------------------------


def test_json_batch_example() -> None:
    body = orjson.dumps(
        [
            {
                **BASE,
                "source": "/mycontext/4",
                "id": "B234-1234-1234",
                "datacontenttype": "application/vnd.apache.thrift.binary",
                "data_base64": base64.b64encode(b"\x01\x02").decode(),
            },
            {
                **BASE,
                "type": "com.example.someotherevent",
                "source": "/mycontext/9",
                "id": "C234-1234-1234",
                "datacontenttype": "application/json",
                "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True},
            },
        ]
    )
    first, second = decode_request(BATCH, body)
    assert first.data == b"\x01\x02"
    assert second.type == "com.example.someotherevent"
    assert orjson.loads(second.data or b"") == {
        "appinfoA": "abc",
        "appinfoB": 123,
        "appinfoC": True,
    }


def test_empty_batch() -> None:
    assert decode_request(BATCH, b"[]") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "a batch must be a JSON array of events, not object"),
        (b"[", "malformed JSON"),
        (orjson.dumps([BASE, 5]), "batch item 1: an event must be a JSON object, not int"),
        (
            orjson.dumps([BASE, BASE, {**BASE, "id": ""}]),
            "batch item 2: attribute 'id' must not be empty",
        ),
        (
            orjson.dumps([BASE, {**BASE, "specversion": "0.3"}]),
            "batch item 1: specversion '0.3' differs from the batch's '1.0'",
        ),
    ],
)
def test_batch_errors(body: bytes, message: str) -> None:
    assert invalid(BATCH, body).startswith(message)


def test_encode_batch_round_trip() -> None:
    events = [
        CloudEvent({**BASE, "id": "1", "datacontenttype": "text/plain"}, "\u00e9t\u00e9".encode()),
        CloudEvent({**BASE, "id": "2", "n": 7, "flag": False}, None),
        CloudEvent({**BASE, "id": "3", "datacontenttype": "image/png"}, b"\x89PNG\x00"),
    ]
    headers, body = encode_batch(events)
    assert headers == {"content-type": "application/cloudevents-batch+json; charset=utf-8"}
    assert decode_request(headers, body) == events
    assert encode_batch([]) == (headers, b"[]")
    with pytest.raises(InvalidEvent, match="batch item 1: specversion '0.3' differs"):
        encode_batch([events[0], CloudEvent({**BASE, "specversion": "0.3"})])


# --- encoding ---------------------------------------------------------------------------------


def test_encode_binary_types_and_content_type() -> None:
    event = CloudEvent(
        {**BASE, "yes": True, "no": False, "count": -42, "datacontenttype": "text/plain"}, b"x"
    )
    headers, body = encode_binary(event)
    assert headers["ce-yes"] == "true" and headers["ce-no"] == "false"
    assert headers["ce-count"] == "-42"
    assert headers["content-type"] == "text/plain"
    assert "ce-datacontenttype" not in headers
    assert body == b"x"


def test_encode_binary_without_data_or_content_type() -> None:
    headers, body = encode_binary(CloudEvent(dict(BASE)))
    assert body == b"" and "content-type" not in headers
    assert all(k.startswith("ce-") for k in headers)


def test_encode_binary_accepts_str_and_int_subclasses() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    event = CloudEvent(
        {**BASE, "subject": Text("a b"), "n": Number(3), "datacontenttype": Text("a/b")}
    )
    headers, _ = encode_binary(event)
    assert headers["ce-subject"] == "a%20b" and headers["ce-n"] == "3"
    assert headers["content-type"] == "a/b"


def test_binary_accepts_raw_utf8_header_values() -> None:
    # not printable ASCII, but unambiguous: taken as is (aiohttp decodes headers as UTF-8)
    assert (
        one(binary_headers(**{"ce-subject": "caf\u00e9"}), b"").attributes["subject"] == "caf\u00e9"
    )


def test_encode_binary_rejects_unencodable_strings() -> None:
    with pytest.raises(InvalidEvent, match="attribute 'subject'"):
        encode_binary(CloudEvent({**BASE, "subject": "\ud800"}))


@pytest.mark.parametrize(
    ("content_type", "data", "member", "value"),
    [
        (None, b'{"a": [1, 2]}', "data", {"a": [1, 2]}),
        (None, b"not json", "data_base64", "bm90IGpzb24="),
        ("application/json", b"null", "data", None),
        ("application/vnd.example+json", b"[1]", "data", [1]),
        ("application/json", b"\xff", "data_base64", "/w=="),
        ("text/plain", "caf\u00e9".encode(), "data", "caf\u00e9"),
        ("text/plain", b"caf\xe9", "data_base64", "Y2Fm6Q=="),  # not UTF-8
        ("application/xml", b"<a/>", "data", "<a/>"),
        ("application/atom+xml", b"<feed/>", "data", "<feed/>"),
        ("text/plain; charset=utf-16", b"\xff\xfeh\x00", "data", "h"),
        # big-endian BOM: decoding then re-encoding would flip byte order, so base64
        ("text/plain; charset=utf-16", b"\xfe\xff\x00h", "data_base64", "/v8AaA=="),
        ("text/plain; charset=no-such-charset", b"ok", "data", "ok"),
        ("text/plain; charset=base64", b"ok", "data", "ok"),  # not a text codec: UTF-8
        ("application/octet-stream", b"ok", "data_base64", "b2s="),
        ("image/png", b"", "data_base64", ""),
    ],
)
def test_encode_structured_data_member(
    content_type: str | None, data: bytes, member: str, value: object
) -> None:
    attrs: dict[str, object] = dict(BASE)
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    event = CloudEvent(attrs, data)  # type: ignore[arg-type]
    headers, body = encode_structured(event)
    assert headers == {"content-type": "application/cloudevents+json; charset=utf-8"}
    obj = orjson.loads(body)
    assert obj[member] == value
    assert ("data" in obj) != ("data_base64" in obj)
    # and decoding gives the same bytes back (JSON data: the same JSON value)
    back = one(headers, body)
    if member == "data_base64" or not (content_type is None or "json" in content_type):
        assert back.data == data
    else:
        assert orjson.loads(back.data or b"") == orjson.loads(data)


def test_encode_structured_keeps_attribute_types() -> None:
    event = CloudEvent({**BASE, "n": 5, "b": True, "s": "5"})
    obj = orjson.loads(encode_structured(event)[1])
    assert obj == {**BASE, "n": 5, "b": True, "s": "5"}
    assert "data" not in obj


def test_is_json_content_type() -> None:
    assert is_json_content_type(None)
    assert is_json_content_type("application/json")
    assert is_json_content_type("Application/JSON; charset=utf-8")
    assert is_json_content_type("text/json")
    assert is_json_content_type("application/vnd.foo+json;v=1")
    assert not is_json_content_type("text/plain")
    assert not is_json_content_type("application/jsonx")
    assert not is_json_content_type("application/json-seq")


# --- replies ----------------------------------------------------------------------------------


def test_decode_response_without_event() -> None:
    assert decode_response(200, {}, b"") is None
    assert decode_response(202, {"content-type": "text/plain"}, b"") is None
    assert decode_response(204, STRUCTURED, b"") is None
    assert decode_response(500, binary_headers(), b"boom") is None  # not 2xx: no reply


def test_decode_response_binary_event_without_data() -> None:
    event = decode_response(200, binary_headers(), b"")
    assert event is not None and event.data is None


def test_decode_response_plain_body_is_not_an_event() -> None:
    with pytest.raises(NotACloudEvent):
        decode_response(200, {"content-type": "text/plain"}, b"ok")


def test_decode_response_rejects_batches_and_broken_events() -> None:
    with pytest.raises(InvalidEvent, match="a reply must be a single event, not a batch"):
        decode_response(200, BATCH, orjson.dumps([BASE]))
    with pytest.raises(InvalidEvent, match="malformed JSON"):
        decode_response(200, STRUCTURED, b"{oops")
    with pytest.raises(InvalidEvent, match="attribute 'id' is missing"):
        headers = binary_headers()
        del headers["ce-id"]
        decode_response(200, headers, b"x")


# --- properties ---------------------------------------------------------------------------------


def canonical_strings(event: CloudEvent) -> dict[str, str]:
    def canon(value: object) -> str:
        if value is True or value is False:
            return "true" if value else "false"
        return str(value)

    return {k: canon(v) for k, v in event.attributes.items()}


@settings(max_examples=300, deadline=None)
@given(events())
def test_binary_round_trip(event: CloudEvent) -> None:
    headers, body = encode_binary(event)
    for name, value in headers.items():
        if name.startswith("ce-"):  # printable ASCII, no space, '"' or '%'-ambiguity
            assert all("\x21" <= c <= "\x7e" and c != '"' for c in value)
    back = one(headers, body)
    assert back.attributes == canonical_strings(event)  # binary values are strings
    assert back.data == event.data


@settings(max_examples=300, deadline=None)
@given(events())
def test_structured_round_trip(event: CloudEvent) -> None:
    headers, body = encode_structured(event)
    back = one(headers, body)
    assert back.attributes == event.attributes  # types kept
    assert back.data == event.data  # non-JSON content types: byte-exact


@settings(max_examples=200, deadline=None)
@given(events(content_type=st.sampled_from(["application/json", "application/x+json"])), st.data())
def test_structured_round_trip_json_data(event: CloudEvent, data: st.DataObject) -> None:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | ce_text
    )
    value = data.draw(
        st.recursive(scalars, lambda c: st.lists(c) | st.dictionaries(ce_text, c), max_leaves=10)
    )
    raw = json.dumps(value, indent=data.draw(st.sampled_from([None, 2]))).encode()
    event = CloudEvent(event.attributes, raw)
    back = one(*encode_structured(event))
    assert back.attributes == event.attributes
    assert json.loads(back.data or b"") == value  # same JSON value (big integers included)


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), max_size=4))
def test_batch_round_trip(items: list[CloudEvent]) -> None:
    for item in items:
        item.attributes["specversion"] = "1.0"
        item.attributes.pop("schemaurl", None)
    assert decode_request(*encode_batch(items)) == items


@settings(max_examples=300, deadline=None)
@given(ce_text)
def test_percent_round_trip(text: str) -> None:
    encoded = percent_encode(text)
    assert encoded.isascii() and " " not in encoded and '"' not in encoded
    assert percent_decode(encoded) == text


# --- W3C trace context beside the event -------------------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_trace_context_is_read_and_written_in_every_mode() -> None:
    from rabbitmesh.cloudevents import decode_amqp, encode_amqp

    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "s",
        "ce-type": "t",
        "traceparent": TRACEPARENT,
        "tracestate": "congo=t61rcWkgMzE",
    }
    (event,) = decode_request(headers, b"x")
    assert event.trace == {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"}
    assert "traceparent" not in event.attributes  # transport context, not an attribute
    out, _ = encode_binary(event)
    assert out["traceparent"] == TRACEPARENT and out["tracestate"] == "congo=t61rcWkgMzE"
    parts = encode_amqp(event)
    assert decode_amqp(parts.headers, parts.body, parts.content_type).trace == event.trace
    structured_headers, body = encode_structured(event)
    assert structured_headers["traceparent"] == TRACEPARENT
    (again,) = decode_request(structured_headers, body)
    assert again.trace == event.trace


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ],
)
def test_malformed_traceparent_is_dropped_not_forwarded(bad: str) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "s",
        "ce-type": "t",
        "traceparent": bad,
        "tracestate": "a=b",
    }
    (event,) = decode_request(headers, b"")
    assert event.trace is None
