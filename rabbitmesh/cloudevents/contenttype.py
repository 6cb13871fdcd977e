"""Media types: which content types carry JSON, text, or a CloudEvents event format.

The JSON event format and both bindings decide things from a Content-Type string (is the
data JSON? is this body structured or batched?). The answers depend only on the media type
with parameters stripped and case folded, and the same few strings arrive over and over, so
the parsing is cached.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from .errors import InvalidEvent

CE_JSON = "application/cloudevents+json"
CE_BATCH_JSON = "application/cloudevents-batch+json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=utf-8"

_CE_PREFIX = "application/cloudevents"

# application/* types whose bodies are text, so the JSON format can carry them as a string.
_TEXTUAL_APPLICATION = frozenset(
    {
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/yaml",
        "application/x-yaml",
        "application/graphql",
        "application/sql",
        "application/x-ndjson",
    }
)

EventFormat = Literal["structured", "batch"]


@lru_cache(maxsize=512)
def media_type(content_type: str) -> str:
    """`type/subtype` of a Content-Type value, lowercased, without parameters."""
    return content_type.partition(";")[0].strip().lower()


@lru_cache(maxsize=512)
def _is_json_media_type(content_type: str) -> bool:
    subtype = media_type(content_type).partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def is_json_content_type(content_type: str | None) -> bool:
    """True when the JSON event format treats data of this content type as JSON.

    That is `*/json` or `*/*+json` (JSON format 1.0.2 §3.1.1), parameters ignored. None (no
    datacontenttype) counts as JSON: the JSON format reads an absent datacontenttype as
    `application/json`.
    """
    if content_type is None:
        return True
    return _is_json_media_type(content_type)


@lru_cache(maxsize=512)
def is_textual_content_type(content_type: str) -> bool:
    """True for media types whose bodies are text (text/*, XML, YAML, JavaScript, forms)."""
    mt = media_type(content_type)
    if mt.startswith("text/") or mt in _TEXTUAL_APPLICATION:
        return True
    subtype = mt.partition("/")[2]
    return subtype.endswith(("+xml", "+yaml"))


@lru_cache(maxsize=512)
def charset(content_type: str) -> str | None:
    """The `charset` parameter of a Content-Type value, lowercased, or None."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


@lru_cache(maxsize=512)
def _event_format(mt: str) -> EventFormat | Literal["unsupported"] | None:
    if not mt.startswith(_CE_PREFIX):
        return None
    if mt == CE_JSON:
        return "structured"
    if mt == CE_BATCH_JSON:
        return "batch"
    rest = mt[len(_CE_PREFIX) :]
    if rest == "" or rest[0] == "+" or rest.startswith("-batch"):
        return "unsupported"
    return None  # e.g. application/cloudeventsfoo: not the CloudEvents media type


def is_event_format(content_type: str) -> bool:
    """True for a CloudEvents media type (`application/cloudevents+json`, `...-batch+xml`)."""
    return _event_format(media_type(content_type)) is not None


def event_format(content_type: str | None) -> EventFormat | None:
    """Which content mode a Content-Type selects: "structured", "batch", or None (binary).

    Raises InvalidEvent for a CloudEvents media type whose format we cannot read (say
    `application/cloudevents+avro`): forwarding it as binary would hand subscribers an
    event they did not send.
    """
    if not content_type:
        return None
    mt = media_type(content_type)
    fmt = _event_format(mt)
    if fmt == "unsupported":
        raise InvalidEvent(f"unsupported event format {mt!r}")
    return fmt
