"""The RabbitMQ (AMQP 0-9-1) binding, as knative-extensions/eventing-rabbitmq uses it.

Binary mode: every attribute but datacontenttype is a `ce-<name>` message header keeping
its type (str, int, bool), datacontenttype is the `content_type` property, `message_id`
is the id, delivery is persistent, the body is the data. Working on plain values (not
aio-pika objects) keeps this pure and testable; the runtime builds the Message.

Decoding is lenient in what it reads and strict in what it accepts:
- `ce-` prefix in any case; also `cloudEvents:` / `cloudEvents_` (the CloudEvents AMQP 1.0
  binding's prefixes), which costs one slice per non-`ce-` header, so producers written
  against that spec also work. Other headers (`x-death`, `x-rabbitmesh-*`) are ignored.
- values as str, bytes (UTF-8), int, bool, datetime (AMQP timestamp, becomes RFC 3339
  UTC) or Decimal (its string); void means unset; floats, tables and arrays are rejected.
- a `content_type` in the CloudEvents JSON format means a structured-mode message, as the
  AMQP binding (§3) decides by content type.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from .contenttype import event_format
from .errors import InvalidEvent, NotACloudEvent
from .event import AttributeValue, CloudEvent
from .jsonformat import decode_structured
from .tracecontext import TRACE_HEADERS, valid_trace
from .validation import validate

#: AMQP delivery_mode of a message RabbitMQ writes to disk.
PERSISTENT = 2
_AMQP10_PREFIXES = frozenset({"cloudEvents:", "cloudEvents_"})


class AmqpParts(NamedTuple):
    """What to publish: enough to build an aio_pika.Message without importing aio-pika."""

    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    message_id: str
    delivery_mode: int = PERSISTENT


def encode_amqp(event: CloudEvent) -> AmqpParts:
    """The message parts of `event` in binary mode."""
    headers: dict[str, Any] = {}
    content_type: str | None = None
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            content_type = str(value)  # validated as a String
        else:
            headers["ce-" + name] = value
    if event.trace:
        headers.update(event.trace)
    return AmqpParts(headers, event.data or b"", content_type, str(event.attributes.get("id", "")))


# Header name -> attribute name ("" for headers that are not attributes). Deliveries carry
# the same few header names over and over, so this replaces prefix tests and lower() with
# one dict lookup; capped so arbitrary names cannot grow it without bound.
_HEADER_NAMES: dict[str, str] = {}
_HEADER_NAMES_MAX = 4096


def _attribute_name(key: str) -> str:
    if key[:3].lower() == "ce-":
        name = key[3:].lower()
    elif key[:12] in _AMQP10_PREFIXES:
        name = key[12:].lower()
    else:
        name = ""
    if len(_HEADER_NAMES) < _HEADER_NAMES_MAX and len(key) <= 64:
        _HEADER_NAMES[key] = name
    return name


def _format_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # pamqp gives aware UTC; naive means UTC too
    timespec = "microseconds" if value.microsecond else "seconds"
    text = value.astimezone(UTC).isoformat(timespec=timespec)
    return text.removesuffix("+00:00") + "Z"


def _convert(header: str, value: Any) -> AttributeValue | None:
    """An AMQP header value as an attribute value (None: unset)."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(f"header {header!r}: bytes are not valid UTF-8") from None
    if isinstance(value, datetime):
        try:
            return _format_datetime(value)
        except OverflowError:  # e.g. year 1 at UTC+1: before datetime.min once in UTC
            raise InvalidEvent(f"header {header!r}: timestamp {value} is out of range") from None
    if isinstance(value, Decimal):
        return str(value)
    if value is None:
        return None
    if isinstance(value, str | int):  # subclasses; bool is an int
        return value
    raise InvalidEvent(
        f"header {header!r}: unsupported value type {type(value).__name__} "
        "(CloudEvents attributes are strings, integers or booleans)"
    )


def decode_amqp(
    headers: Mapping[str, Any] | None, body: bytes, content_type: str | None
) -> CloudEvent:
    """Decode a delivered message into a validated CloudEvent.

    Raises NotACloudEvent when there is no `ce-specversion` header and the content type is
    not a CloudEvents format, InvalidEvent for every other problem.
    """
    mode = event_format(content_type)
    trace = _trace(headers)
    if mode == "structured":
        event = decode_structured(bytes(body))
        event.trace = trace
        return event
    if mode == "batch":
        raise InvalidEvent("a message must hold a single event, not a batch")

    attributes: dict[str, AttributeValue] = {}
    if headers:
        names = _HEADER_NAMES
        for key, value in headers.items():
            name = names.get(key)
            if name is None:
                name = _attribute_name(key)
            if not name:
                continue
            kind = type(value)
            if kind is not str and kind is not int and kind is not bool:
                value = _convert(key, value)
                if value is None:
                    continue
            if name in attributes:
                raise InvalidEvent(f"attribute {name!r} appears in more than one header")
            attributes[name] = value

    if "specversion" not in attributes:
        raise NotACloudEvent("not a CloudEvent: no 'ce-specversion' header")
    if content_type:
        if "datacontenttype" in attributes:
            raise InvalidEvent("datacontenttype is given both as content_type and as a header")
        attributes["datacontenttype"] = content_type
    validate(attributes)
    return CloudEvent(attributes, bytes(body) if body else None, trace)


def _trace(headers: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not headers or "traceparent" not in headers:
        return None
    raw = {k: headers[k] for k in TRACE_HEADERS if k in headers}
    # Not UTF-8 cannot be a valid trace header: "replace" makes valid_trace drop it.
    return valid_trace(
        {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in raw.items()}
    )
