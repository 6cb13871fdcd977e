"""The JSON event format (1.0.2, and 0.3) and its batch format, with orjson.

Decoding turns a JSON object into a CloudEvent whose data is bytes, because rabbitmesh
forwards events and never needs the data as objects:

- `data_base64` (1.0) and `data` with `datacontentencoding: base64` (0.3) become the
  decoded bytes. The 0.3 `datacontentencoding` attribute is dropped afterwards: it only
  describes how `data` sat inside the JSON, and once the bytes are raw (binary HTTP,
  AMQP) keeping it would tell the next receiver to base64-decode them again.
- `data` with a JSON content type (or none) becomes its JSON serialisation, so `null`
  stays an explicit JSON null payload (`b"null"`), distinct from no data.
- `data` that is a string with a non-JSON content type becomes the string's bytes in the
  content type's charset (UTF-8 by default), so text round-trips exactly.
- An absent datacontenttype stays absent (as Knative's Go SDK does): attributes travel
  unchanged; `is_json_content_type(None)` tells readers it means JSON.

Encoding picks the most readable lossless member: the parsed JSON value for JSON content,
a string for text, base64 otherwise.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import accumulate
from typing import Any

import orjson

from .contenttype import charset, is_json_content_type, is_textual_content_type
from .errors import InvalidEvent, OverLimit
from .event import AttributeValue, CloudEvent
from .validation import type_name, validate

#: Deepest nesting of arrays and objects accepted in any JSON ingress reads (the outermost
#: value counts as 1): a structured event as a whole, a batch, binary-mode data with a JSON
#: content type. orjson parses up to 1024 levels but serialises only 254, and the stdlib's
#: fallback raises RecursionError near 1000, so deeper data would be accepted and then break
#: every delivery attempt. Real events nest a handful of levels.
MAX_JSON_DEPTH = 64

_MISSING: Any = object()
_UTF8_NAMES = frozenset({"utf-8", "utf8"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# orjson turns integers outside 64 bits into floats, silently losing digits. Any run of 19+
# digits might be one, so such bodies take the exact (slower) stdlib parser.
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{19}")


class _NestedTooDeep(InvalidEvent):
    """The parser itself gave up on the nesting (orjson past 1024 levels, the stdlib near
    the recursion limit)."""


def loads(body: bytes) -> Any:
    """Parse JSON exactly: orjson normally, the stdlib when the body may hold huge integers."""
    if _LONG_DIGIT_RUN.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if str(exc).startswith("depth limit exceeded"):
                raise _NestedTooDeep(f"malformed JSON: {exc}") from None
            raise InvalidEvent(f"malformed JSON: {exc}") from None
    try:
        return json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except RecursionError as exc:
        raise _NestedTooDeep(f"malformed JSON: {exc}") from None
    except ValueError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}") from None


def too_deep(value: Any, limit: int) -> bool:
    """True when parsed JSON nests arrays and objects more than `limit` levels deep.

    Level by level and without recursion, so a hostile value cannot exhaust the stack; only
    containers are followed.
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below.extend([c for c in children if type(c) is dict or type(c) is list])
        level = below
    return False


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_DELTA = [0] * 256
_DELTA[ord("[")], _DELTA[ord("]")] = 1, -1
_BACKSLASH = ord("\\")


def text_too_deep(data: bytes, limit: int, chunk: int = 64 * 1024) -> bool:
    """True when the JSON text `data` nests arrays and objects more than `limit` deep.

    Read from the bytes, without building a single object: binary-mode data is otherwise
    never parsed, and parsing 4 MiB of `[[],[],...]` would cost far more than the check. Per
    chunk, escaped backslashes and quotes are dropped, strings cut out with split('"'), the
    brackets kept (translate), and their running depth followed (accumulate), all in C; the
    GIL is free between chunks. For text that is not JSON the answer only says how deep its
    brackets outside quotes nest.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False  # at the start of the chunk
    start, size = 0, len(data)
    while start < size:
        end = min(start + chunk, size)
        while end < size and data[end - 1] == _BACKSLASH:  # keep escapes whole
            end += 1
        piece = data[start:end]
        if in_string or b'"' in piece:
            # A backslash only appears in JSON strings, where pairing them left to right
            # finds its escapes: once the `\\` pairs are gone, a `\"` left is an escaped
            # quote, and every other quote opens or closes a string.
            piece = piece.replace(b"\\\\", b"").replace(b'\\"', b"")
            parts = piece.split(b'"')
            outside = b"".join(parts[1 if in_string else 0 :: 2])
            if len(parts) % 2 == 0:
                in_string = not in_string
        else:
            outside = piece
        brackets = outside.translate(_TO_SQUARE, _NOT_BRACKETS)
        opens = brackets.count(b"[")
        if depth + opens > limit and (
            max(accumulate(map(_DELTA.__getitem__, brackets), initial=depth)) > limit
        ):
            return True
        depth += 2 * opens - len(brackets)
        start = end
    return False


def _depth_error(limit: int) -> InvalidEvent:
    return InvalidEvent(f"JSON nested deeper than the limit of {limit} levels")


def _loads_depth(body: bytes, max_depth: int) -> Any:
    """`loads`, with the parser's own depth refusal reported as our limit."""
    try:
        return loads(body)
    except _NestedTooDeep:
        raise _depth_error(max_depth) from None


def loads_limited(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`loads`, refusing JSON nested deeper than `max_depth` with InvalidEvent (measured on
    the bytes first: a too deep body is never parsed)."""
    if text_too_deep(body, max_depth):
        raise _depth_error(max_depth)
    return _loads_depth(body, max_depth)


def check_json_data_depth(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse binary-mode data labelled JSON that nests deeper than `max_depth`.

    The data is not parsed (ingress forwards it as it is): its brackets outside strings are
    counted, so data labelled JSON whose brackets nest too deep is refused even when it is
    not valid JSON.
    """
    if text_too_deep(data, max_depth):
        raise InvalidEvent(f"data: {_depth_error(max_depth)}")


def dumps(value: Any) -> bytes:
    """Serialise JSON compactly; the stdlib handles what orjson refuses (huge integers)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # lone surrogates the stdlib parser let through
            return json.dumps(value, separators=(",", ":")).encode()


def _b64decode(value: object, member: str) -> bytes:
    if type(value) is not str:
        raise InvalidEvent(f"member {member!r} must be a base64 string, not {type_name(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent(f"member {member!r} is not valid base64") from None


@lru_cache(maxsize=256)
def _text_codec(content_type: str) -> str:
    """The Python codec for a content type's charset; UTF-8 when absent or unknown."""
    name = charset(content_type)
    if name is None or name in _UTF8_NAMES:
        return "utf-8"
    try:
        codec = codecs.lookup(name).name
        "".encode(codec)  # rejects bytes-to-bytes codecs such as "base64" or "zlib"
    except LookupError:
        return "utf-8"
    return codec


def _text_bytes(text: str, content_type: str) -> bytes:
    codec = _text_codec(content_type)
    try:
        return text.encode(codec)
    except UnicodeError:  # codecs such as idna raise the base class, not UnicodeEncodeError
        raise InvalidEvent(
            f"member 'data' cannot be encoded as {codec} (datacontenttype {content_type!r})"
        ) from None


def _data_bytes(value: Any, content_type: str | None) -> bytes | None:
    if content_type is None or is_json_content_type(content_type):
        return dumps(value)
    if type(value) is str:
        return _text_bytes(value, content_type)
    if value is None:
        return None
    return dumps(value)


def event_from_json(obj: dict[str, Any]) -> CloudEvent:
    """Build and validate a CloudEvent from one parsed JSON-format object."""
    attributes: dict[str, AttributeValue] = {}
    data: Any = _MISSING
    data_base64: Any = _MISSING
    for key, value in obj.items():
        if key == "data":
            data = value
        elif key == "data_base64":
            data_base64 = value
        elif value is not None:  # null means unset (JSON format §2.2)
            attributes[key] = value
    validate(attributes)
    v03 = attributes["specversion"] == "0.3"

    payload: bytes | None = None
    if data_base64 is not _MISSING and data_base64 is not None:
        if v03:
            raise InvalidEvent(
                "member 'data_base64' is not defined in CloudEvents 0.3 "
                "(use 'data' with datacontentencoding 'base64')"
            )
        if data is not _MISSING and data is not None:
            raise InvalidEvent("an event cannot have both 'data' and 'data_base64'")
        payload = _b64decode(data_base64, "data_base64")
    elif v03 and "datacontentencoding" in attributes:
        del attributes["datacontentencoding"]
        if data is not _MISSING and data is not None:
            payload = _b64decode(data, "data")
    elif data is not _MISSING:
        content_type = attributes.get("datacontenttype")  # a String: validate() checked it
        payload = _data_bytes(data, content_type if isinstance(content_type, str) else None)
    return CloudEvent(attributes, payload)


def decode_structured(body: bytes, max_depth: int | None = None) -> CloudEvent:
    """Decode an `application/cloudevents+json` body, no deeper than `max_depth` if given."""
    obj = loads(body) if max_depth is None else loads_limited(body, max_depth)
    if type(obj) is not dict:
        raise InvalidEvent(f"a structured event must be a JSON object, not {type_name(obj)}")
    return event_from_json(obj)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: orjson refuses it too
        raise ValueError(f"number {text} is out of range")
    return value


_ITEM_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_SKIP_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip_whitespace(text: str, pos: int) -> int:
    """The end of the (possibly empty) run of JSON whitespace at `pos`."""
    found = _SKIP_WHITESPACE.match(text, pos)
    assert found is not None  # the pattern matches the empty string everywhere
    return found.end()


class _DecodedPrefix:
    """A UTF-8 body's text, decoded only as far as a parse has needed it.

    A batch is refused at item `max_events` + 1: decoding the rest of a 4 MiB body first
    (a 4 MiB string, milliseconds of page faults) was most of what a refused batch cost.
    The decoded part at least doubles each time it grows, so a body read to its end costs
    about two decodes.
    """

    __slots__ = ("_body", "_decoder", "_done", "_finished", "text")

    FIRST_BYTES = 64 * 1024

    def __init__(self, body: bytes) -> None:
        self._body = memoryview(body)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._done = 0
        self._finished = False
        self.text = ""
        self.extend()

    def extend(self) -> bool:
        """Decode more of the body; False when it was all decoded already."""
        if self._finished:
            return False
        size = len(self._body)
        end = min(size, max(2 * self._done, self.FIRST_BYTES))
        try:
            piece = self._decoder.decode(self._body[self._done : end], final=end == size)
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"malformed JSON: {_utf8_error(self._body, exc)}") from None
        self.text += piece
        self._done = end
        self._finished = end == size
        return True

    def char_at(self, pos: int) -> str:
        """The character at `pos`, "" past the end of the whole text."""
        while pos >= len(self.text) and self.extend():
            pass
        return self.text[pos : pos + 1]

    def skip_whitespace(self, pos: int) -> int:
        """The first position at or after `pos` that is not JSON whitespace."""
        while True:
            pos = _skip_whitespace(self.text, pos)
            if pos < len(self.text) or not self.extend():
                return pos


def _utf8_error(body: memoryview, exc: UnicodeDecodeError) -> UnicodeDecodeError:
    """The error decoding the whole body raises (its positions count from the body's start)."""
    try:
        bytes(body).decode("utf-8")
    except UnicodeDecodeError as whole:
        return whole
    return exc


def batch_items(body: bytes, max_events: int | None, max_depth: int | None) -> list[Any]:
    """The items of a JSON array, parsed one at a time; stops at item `max_events` + 1.

    The stdlib's C scanner parses each item (orjson can only parse the whole body): counting
    stops at the first item over the limit, so a refused batch costs what its first
    `max_events` items cost (the body is decoded only as far as they reach), and a long batch
    is never one long call that holds the GIL. Its results equal orjson's except that huge
    integers stay exact (as `loads` keeps them) and lone surrogates in strings get through
    (attribute validation refuses them).
    """
    src = _DecodedPrefix(body)
    pos = src.skip_whitespace(0)
    if src.char_at(pos) != "[":
        # Not an array: say what it is, or how it is broken.
        value = loads(body) if max_depth is None else _loads_depth(body, max_depth)
        raise InvalidEvent(f"a batch must be a JSON array of events, not {type_name(value)}")
    items: list[Any] = []
    pos = src.skip_whitespace(pos + 1)
    closed = src.char_at(pos) == "]"
    while not closed:
        start = pos
        item, pos = _next_item(src, pos, max_depth)
        items.append(item)
        if max_events is not None and len(items) > max_events:
            raise batch_over_limit(max_events)
        # The array is level 1, so an item may nest max_depth - 1 levels.
        if max_depth is not None:
            brackets = src.text.count("[", start, pos) + src.text.count("{", start, pos)
            if brackets >= max_depth and too_deep(item, max_depth - 1):
                raise _depth_error(max_depth)
        pos = src.skip_whitespace(pos)
        separator = src.char_at(pos)
        if separator == ",":
            pos = src.skip_whitespace(pos + 1)
        elif separator == "]":
            closed = True
        else:
            raise InvalidEvent(f"malformed JSON: expected ',' or ']' at char {pos}")
    if src.skip_whitespace(pos + 1) != len(src.text):
        raise InvalidEvent(f"malformed JSON: unexpected content after the array at char {pos + 1}")
    return items


def batch_over_limit(max_events: int) -> OverLimit:
    """The refusal of a batch of more than `max_events` events (413)."""
    return OverLimit(f"batch exceeds the limit of {max_events} events")


#: Separators (commas after a `}` or `]`) an over-long batch's prefix is tried at, from its
#: end (cut_batch_too_long); each try is one parse.
CUT_ATTEMPTS = 3


def cut_batch_too_long(prefix: bytes, max_events: int, max_depth: int | None) -> bool:
    """True when `prefix`, the start of a batch that holds item `max_events` + 1 whole
    (rabbitmesh/ingress/batchcount.py), is surely refused for its length as `batch_items`
    would refuse it: every item up to there parses and nests no deeper than `max_depth` (the
    array counts as a level). One orjson call, several times cheaper than parsing item by
    item; meant for prefixes small enough to parse on the event loop.

    The prefix ends at a comma that may lie inside an item: it is closed (`]`) after one of
    its last commas that follow a `}` or `]`; if that makes valid JSON, the comma separated
    the array's items (inside an item or a string the brackets or quotes would not balance).
    False when it cannot tell (a broken or too deep item, a lone surrogate, a number orjson
    refuses, no such separator among the last few): `batch_items` then says what is wrong,
    400 or 413, as it would for the whole body. orjson is at least as strict as the item
    parser, so it never accepts an item that `batch_items` would refuse."""
    attempts, end = CUT_ATTEMPTS, len(prefix)
    while attempts:
        comma = prefix.rfind(b",", 0, end)
        if comma < 0:
            return False
        end = comma
        before = comma - 1
        while before >= 0 and prefix[before] in _JSON_SPACE:
            before -= 1
        if before < 0 or prefix[before] not in _CLOSING:
            continue
        attempts -= 1
        try:
            items = orjson.loads(prefix[:comma] + b"]")
        except orjson.JSONDecodeError:
            continue
        return (
            type(items) is list
            and len(items) > max_events
            and (max_depth is None or not too_deep(items, max_depth))
        )
    return False


_JSON_SPACE = frozenset(b" \t\r\n")
_CLOSING = frozenset(b"]}")


def _next_item(src: _DecodedPrefix, pos: int, max_depth: int | None) -> tuple[Any, int]:
    """The item starting at `pos` and where it ends, decoding more of the body while the
    item runs past the decoded part (a cut object or string fails to parse; a number cut at
    the decoded end would parse short, so an item ending exactly there is parsed again)."""
    while True:
        text = src.text
        try:
            item, end = _ITEM_DECODER.raw_decode(text, pos)
        except RecursionError:  # a cut item nests no deeper than the whole one
            if max_depth is None:
                raise InvalidEvent("malformed JSON: nested too deep to parse") from None
            raise _depth_error(max_depth) from None
        except ValueError as exc:
            if src.extend():
                continue
            raise InvalidEvent(f"malformed JSON: {exc}") from None
        if end == len(text) and src.extend():
            continue
        return item, end


def decode_batch(
    body: bytes, max_events: int | None = None, max_depth: int | None = None
) -> list[CloudEvent]:
    """Decode an `application/cloudevents-batch+json` body; items are numbered from 0.

    More than `max_events` items raise OverLimit as soon as item `max_events` + 1 is read,
    before any item is validated: validating costs far more than parsing, and a refused
    batch should cost little. JSON deeper than `max_depth` (if given; the array counts as a
    level) is refused.
    """
    items = batch_items(body, max_events, max_depth)
    events: list[CloudEvent] = []
    for index, item in enumerate(items):
        try:
            if type(item) is not dict:
                raise InvalidEvent(f"an event must be a JSON object, not {type_name(item)}")
            event = event_from_json(item)
            if events and event.specversion != events[0].specversion:
                raise InvalidEvent(
                    f"specversion {event.specversion!r} differs from the batch's "
                    f"{events[0].specversion!r}"
                )
        except InvalidEvent as exc:
            raise InvalidEvent(f"batch item {index}: {exc}") from None
        events.append(event)
    return events


def _decode_text(data: bytes, content_type: str) -> str | None:
    codec = _text_codec(content_type)
    try:
        text = data.decode(codec)
        if codec != "utf-8" and text.encode(codec) != data:
            return None  # not a lossless round trip in this codec (e.g. BOM or byte order)
    except UnicodeError:  # codecs such as idna raise the base class
        return None
    return text


def event_to_json(event: CloudEvent) -> dict[str, Any]:
    """The JSON-format object of `event` (attributes keep their JSON types)."""
    obj: dict[str, Any] = dict(event.attributes)
    v03 = obj.get("specversion") == "0.3"
    if v03:
        obj.pop("datacontentencoding", None)  # our data is raw bytes; see module docstring
    data = event.data
    if data is None:
        return obj
    content_type = event.datacontenttype
    if is_json_content_type(content_type):
        try:
            obj["data"] = loads(data)
            return obj
        except InvalidEvent:
            pass  # not JSON after all: carry it losslessly as base64
    elif content_type is not None and is_textual_content_type(content_type):
        text = _decode_text(data, content_type)
        if text is not None:
            obj["data"] = text
            return obj
    encoded = base64.b64encode(data).decode("ascii")
    if v03:
        obj["datacontentencoding"] = "base64"
        obj["data"] = encoded
    else:
        obj["data_base64"] = encoded
    return obj


def encode_json(event: CloudEvent) -> bytes:
    """Serialise one event in the JSON format."""
    return dumps(event_to_json(event))


def encode_json_batch(events: Iterable[CloudEvent]) -> bytes:
    """Serialise events in the JSON batch format; all must share one specversion."""
    objs = [event_to_json(e) for e in events]
    if objs:
        first = objs[0].get("specversion")
        for index, obj in enumerate(objs):
            if obj.get("specversion") != first:
                raise InvalidEvent(
                    f"batch item {index}: specversion {obj.get('specversion')!r} differs "
                    f"from the batch's {first!r}"
                )
    return dumps(objs)
