"""The CloudEvents HTTP protocol binding (1.0.2; 0.3 events travel the same way).

Requests and replies are told apart by Content-Type alone, as §3 says: a CloudEvents JSON
media type means structured or batched mode, anything else binary mode. Binary mode then
requires `ce-specversion`; other `ce-` headers on a plain request do not make it a
CloudEvent (the Python SDK guesses from any `ce-` header). In structured and batched mode
`ce-` headers are ignored: the body is the whole event (§3.2.3).

Header values are percent-decoded and checked strictly; binary attribute values are always
strings. encode_binary is on the delivery hot path, so it does one dict pass and skips
escaping for values that need none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .contenttype import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    event_format,
    is_json_content_type,
)
from .errors import InvalidEvent, NotACloudEvent
from .event import AttributeValue, CloudEvent
from .jsonformat import (
    MAX_JSON_DEPTH,
    check_json_data_depth,
    decode_batch,
    decode_structured,
    encode_json,
    encode_json_batch,
)
from .percent import percent_decode, percent_encode
from .tracecontext import TRACE_HEADERS, valid_trace
from .validation import validate

_SPECVERSION_HEADER = "ce-specversion"


# Header name as received -> lowercased name if it is a `ce-` header or Content-Type, else
# "". Requests carry the same few names over and over, so one dict lookup replaces lower()
# and prefix tests; capped so arbitrary names cannot grow it without bound.
_HEADER_KINDS: dict[str, str] = {}
_HEADER_KINDS_MAX = 4096


def _classify(key: str) -> str:
    lower = key.lower()
    kind = lower if lower.startswith("ce-") or lower in _PLAIN_HEADERS else ""
    if len(_HEADER_KINDS) < _HEADER_KINDS_MAX and len(key) <= 64:
        _HEADER_KINDS[str(key)] = kind
    return kind


_PLAIN_HEADERS = frozenset({"content-type", *TRACE_HEADERS})


class _Headers(NamedTuple):
    ce: dict[str, str]  # lowercased `ce-` header name -> raw value
    content_type: str | None
    duplicate: str | None  # first `ce-` header seen twice (an error in binary mode only)
    trace: dict[str, str] | None


def _scan(headers: Mapping[str, str]) -> _Headers:
    """Pick the `ce-` headers and Content-Type out of a request's or response's headers."""
    ce: dict[str, str] = {}
    content_type: str | None = None
    duplicate: str | None = None
    trace: dict[str, str] | None = None
    names = _HEADER_KINDS
    for key, value in headers.items():
        lower = names.get(key)
        if lower is None:
            lower = _classify(key)
        if not lower:
            continue
        if lower in TRACE_HEADERS:
            if trace is None:
                trace = {}
            trace[lower] = value
            continue
        if lower == "content-type":
            if content_type is not None:
                raise InvalidEvent("duplicate header 'content-type'")
            content_type = value
        elif lower in ce:
            duplicate = duplicate or lower
        else:
            ce[lower] = value
    return _Headers(ce, content_type or None, duplicate, valid_trace(trace))


def _decode_binary(scanned: _Headers, body: bytes, max_depth: int | None) -> CloudEvent:
    if _SPECVERSION_HEADER not in scanned.ce:
        raise NotACloudEvent(
            "not a CloudEvent: no 'ce-specversion' header and content type "
            f"{scanned.content_type or '(none)'!r} is not a CloudEvents format"
            f"{_structured_hint(body)}"
        )
    if scanned.duplicate is not None:
        raise InvalidEvent(f"duplicate header {scanned.duplicate!r}")
    attributes: dict[str, AttributeValue] = {}
    for header, raw in scanned.ce.items():
        if "%" in raw or raw[:1] == '"':
            try:
                raw = percent_decode(raw)
            except ValueError as exc:
                raise InvalidEvent(f"header {header!r}: {exc}") from None
        attributes[header[3:]] = raw
    if "datacontenttype" in attributes:
        raise InvalidEvent(
            "header 'ce-datacontenttype' is not allowed in binary mode: "
            "the data's media type goes in Content-Type"
        )
    if scanned.content_type is not None:
        attributes["datacontenttype"] = scanned.content_type
    validate(attributes)
    # No content type means JSON data.
    if max_depth is not None and body and is_json_content_type(scanned.content_type):
        check_json_data_depth(body, max_depth)
    return CloudEvent(attributes, body or None, scanned.trace)


def _structured_hint(body: bytes) -> str:
    """A body that is a structured event (or a batch of them) sent with another content
    type, e.g. `application/json`, is the usual cause: say which content type to use."""
    # Cheap tests first: this is also the path of junk, and a hint is not worth parsing a
    # large body on an error path.
    if len(body) > 64 * 1024 or b"specversion" not in body:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if isinstance(data, dict) and "specversion" in data:
        return (
            "; the body looks like a structured-mode event: send it with "
            "Content-Type: application/cloudevents+json"
        )
    if (
        isinstance(data, list)
        and data
        and all(isinstance(e, dict) and "specversion" in e for e in data)
    ):
        return (
            "; the body looks like a batch of events: send it with "
            "Content-Type: application/cloudevents-batch+json"
        )
    return ""


def decode_request(
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_events: int | None = None,
    max_depth: int | None = MAX_JSON_DEPTH,
) -> list[CloudEvent]:
    """Decode an HTTP request into its events (one, or any number in batched mode).

    `headers` may be aiohttp's case-insensitive multidict or a plain dict with any case.
    Raises NotACloudEvent when the request is not a CloudEvent at all, InvalidEvent when it
    is a broken one: JSON (the structured event, the batch, binary data with a JSON content
    type) nested deeper than `max_depth` included (None: no limit but the parser's). A batch
    of more than `max_events` raises OverLimit (an InvalidEvent) before any of its events is
    validated.
    """
    if type(body) is not bytes:
        body = bytes(body)
    scanned = _scan(headers)
    mode = event_format(scanned.content_type)
    if mode == "structured":
        events = [decode_structured(body, max_depth)]
    elif mode == "batch":
        events = decode_batch(body, max_events, max_depth)
    else:
        return [_decode_binary(scanned, body, max_depth)]
    if scanned.trace:
        for event in events:
            event.trace = scanned.trace
    return events


def decode_response(status: int, headers: Mapping[str, str], body: bytes) -> CloudEvent | None:
    """Decode a subscriber's reply: the event it returned, or None when it returned none.

    Only 2xx responses carry replies (Knative data plane), so any other status gives None.
    An empty body without `ce-specversion` is "no reply"; a non-empty body that is not a
    valid single CloudEvent raises InvalidEvent (NotACloudEvent for a plain body), since a
    Trigger counts that as a failed delivery.
    """
    if not 200 <= status < 300:
        return None
    if type(body) is not bytes:
        body = bytes(body)
    scanned = _scan(headers)
    if not body and _SPECVERSION_HEADER not in scanned.ce:
        return None
    mode = event_format(scanned.content_type)
    if mode == "structured":
        event = decode_structured(body)
        event.trace = scanned.trace
        return event
    if mode == "batch":
        raise InvalidEvent("a reply must be a single event, not a batch")
    return _decode_binary(scanned, body, None)


def encode_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of `event` in binary mode.

    Every attribute becomes a `ce-` header except datacontenttype, which becomes
    Content-Type; with no datacontenttype there is no Content-Type (callers must stop
    their HTTP client from adding one, e.g. aiohttp's skip_auto_headers).
    """
    headers: dict[str, str] = {}
    for name, value in event.attributes.items():
        if type(value) is str:
            if name == "datacontenttype":
                headers["content-type"] = value
                continue
            # Inline needs_encoding(): printable ASCII without space, '"' or '%' passes.
            if (
                not (value.isascii() and value.isprintable())
                or " " in value
                or '"' in value
                or "%" in value
            ):
                try:
                    value = percent_encode(value)
                except ValueError as exc:
                    raise InvalidEvent(f"attribute {name!r}: {exc}") from None
            headers["ce-" + name] = value
        elif value is True or value is False:
            headers["ce-" + name] = "true" if value else "false"
        elif type(value) is int:
            headers["ce-" + name] = str(value)
        elif name == "datacontenttype":
            headers["content-type"] = str(value)
        else:  # subclasses of str or int: rare, so kept off the fast path
            headers["ce-" + name] = (
                percent_encode(str(value)) if isinstance(value, str) else str(int(value))
            )
    if event.trace:
        headers.update(event.trace)
    return headers, event.data or b""


def encode_structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of `event` in structured mode (JSON format)."""
    headers = {"content-type": STRUCTURED_CONTENT_TYPE}
    if event.trace:
        headers.update(event.trace)
    return headers, encode_json(event)


def encode_batch(events: Iterable[CloudEvent]) -> tuple[dict[str, str], bytes]:
    """Headers and body of `events` in batched mode (JSON batch format)."""
    return {"content-type": BATCH_CONTENT_TYPE}, encode_json_batch(events)
