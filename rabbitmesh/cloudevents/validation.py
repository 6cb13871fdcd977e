"""Validation of context attributes against CloudEvents 1.0.2 and 0.3.

Every decoder ends here, so an event that passes is one every other part of rabbitmesh (and
every subscriber) can rely on: a known specversion, non-empty id/source/type, well-formed
time and URIs, extension names and values of the CloudEvents type system. Nothing is
filled in or normalised; an invalid event is rejected with a message naming the attribute.

It runs for every delivery, so the common cases take fast paths: str.isprintable() before
the forbidden-character regex, str methods for extension names, and a cache for URI checks
(sources repeat).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache

from .contenttype import is_event_format
from .errors import InvalidEvent

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
#: Longest extension name accepted. The spec only recommends <= 20 characters; 250 keeps
#: names usable as HTTP and AMQP header names without rejecting real producers.
MAX_NAME_LENGTH = 250
#: Longest `id` and `datacontenttype`, in UTF-8 bytes. They travel as the AMQP short-string
#: properties message_id and content_type (RabbitMQ binding), which hold at most 255 bytes:
#: a longer value could never be published, so it is refused here, naming the attribute.
MAX_SHORT_STRING_BYTES = 255


def _forbidden_chars() -> re.Pattern[str]:
    # CloudEvents String (1.0.2 type system): no C0/C1 controls, no surrogates, no
    # Unicode noncharacters (U+FDD0..U+FDEF and the last two code points of every plane).
    ranges = [r"\x00-\x1f", r"\x7f-\x9f", r"\ud800-\udfff", r"\ufdd0-\ufdef"]
    for plane in range(sys.maxunicode // 0x10000 + 1):
        base = plane * 0x10000
        ranges.append(f"{chr(base + 0xFFFE)}{chr(base + 0xFFFF)}")
    return re.compile("[" + "".join(ranges) + "]")


_FORBIDDEN = _forbidden_chars()

# Field ranges are in the regex so the common case is one match; only days 29-31 need
# the calendar.
_TIMESTAMP = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# RFC 3986 grammar, ASCII only. Host syntax inside the authority is not checked in detail.
_PCT = r"%[0-9A-Fa-f]{2}"
_UNRESERVED_SUB = r"A-Za-z0-9\-._~!$&'()*+,;="
_PCHAR = rf"(?:[{_UNRESERVED_SUB}:@]|{_PCT})"
_AUTHORITY = rf"(?:[{_UNRESERVED_SUB}:@\[\]]|{_PCT})*"
_SEGMENT_NZ_NC = rf"(?:[{_UNRESERVED_SUB}@]|{_PCT})+"
_QUERY_FRAGMENT = rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:\#(?:{_PCHAR}|[/?])*)?"
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*"
_HIER_PART = rf"(?://{_AUTHORITY}(?:/{_PCHAR}*)*|(?:{_PCHAR}|/)*)"
_RELATIVE_PART = (
    rf"(?://{_AUTHORITY}(?:/{_PCHAR}*)*|/(?:{_PCHAR}|/)*|{_SEGMENT_NZ_NC}(?:/{_PCHAR}*)*|)"
)
_URI = re.compile(rf"{_SCHEME}:{_HIER_PART}{_QUERY_FRAGMENT}")
_URI_REFERENCE = re.compile(rf"(?:{_SCHEME}:{_HIER_PART}|{_RELATIVE_PART}){_QUERY_FRAGMENT}")


# Sources and schemas repeat across events, so results are cached, but only for strings
# short enough that a flood of distinct huge values cannot pin much memory.
_CACHEABLE_LENGTH = 512


@lru_cache(maxsize=4096)
def _cached_uri_reference(value: str) -> bool:
    return _URI_REFERENCE.fullmatch(value) is not None


@lru_cache(maxsize=1024)
def _cached_uri(value: str) -> bool:
    return _URI.fullmatch(value) is not None


def is_uri_reference(value: str) -> bool:
    """RFC 3986 §4.1 URI-reference (absolute or relative)."""
    if len(value) <= _CACHEABLE_LENGTH:
        return _cached_uri_reference(value)
    return _URI_REFERENCE.fullmatch(value) is not None


def is_uri(value: str) -> bool:
    """RFC 3986 URI with a scheme (a fragment is tolerated, see dataschema)."""
    if len(value) <= _CACHEABLE_LENGTH:
        return _cached_uri(value)
    return _URI.fullmatch(value) is not None


def is_rfc3339(value: str) -> bool:
    """RFC 3339 date-time: full date, 'T', time with seconds, optional fraction, offset.

    Lowercase 't'/'z' are accepted (RFC 3339 §5.6 NOTE); second 60 is its leap second.
    """
    if _TIMESTAMP.fullmatch(value) is None:
        return False
    if value[8:10] <= "28":
        return True
    month = int(value[5:7])
    days = _DAYS_IN_MONTH[month]
    if month == 2:
        year = int(value[:4])
        if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
            days = 29
    return int(value[8:10]) <= days


# Extension names seen valid before: a handful per deployment, so one set lookup. Capped so
# a stream of random names cannot grow it without bound.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096


def is_extension_name(name: str) -> bool:
    """1-250 characters, each an ASCII lowercase letter or digit."""
    return (
        0 < len(name) <= MAX_NAME_LENGTH
        and name.isascii()
        and name.isalnum()
        and (name.islower() or name.isdigit())
    )


_JSON_TYPE_NAMES = {dict: "object", list: "array", type(None): "null", float: "float"}


def type_name(value: object) -> str:
    """Name of a value's type as users think of it (JSON names where they differ)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _check_string_chars(name: str, value: str) -> None:
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        raise InvalidEvent(
            f"attribute {name!r} contains U+{ord(bad.group()):04X}, "
            "which CloudEvents strings do not allow"
        )


def _nonempty(name: str, value: str) -> None:
    if not value:
        raise InvalidEvent(f"attribute {name!r} must not be empty")


def _short_string(name: str, value: str) -> None:
    # 63 characters are at most 252 bytes in UTF-8: only longer values need encoding.
    if len(value) > MAX_SHORT_STRING_BYTES // 4:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_SHORT_STRING_BYTES:
            raise InvalidEvent(
                f"attribute {name!r} is {size} bytes; at most {MAX_SHORT_STRING_BYTES} are "
                "allowed (it travels as an AMQP short string)"
            )


def _id(name: str, value: str) -> None:
    _nonempty(name, value)
    _short_string(name, value)


def _uri_reference(name: str, value: str) -> None:
    _nonempty(name, value)
    if not is_uri_reference(value):
        raise InvalidEvent(f"attribute {name!r} is not a URI-reference: {value!r}")


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _source(name: str, value: str) -> None:
    """`source` as Knative's Go SDK takes it (url.Parse): non-empty, escapes well-formed.

    The spec says URI-reference; being stricter than Knative here would turn events that
    Knative users send today (`"my service"`, `/café`) into 400s, so only what Go's parser
    rejects is rejected.
    """
    _nonempty(name, value)
    if _BAD_PERCENT.search(value):
        raise InvalidEvent(f"attribute {name!r} has a malformed %-escape: {value!r}")


def _content_type(name: str, value: str) -> None:
    """Non-empty, and not a CloudEvents event format.

    Binary mode puts datacontenttype in Content-Type (HTTP) or content_type (AMQP), where a
    CloudEvents media type means "the body is an event": the data would be read as a
    different event, or as a broken one, by the next hop.
    """
    _nonempty(name, value)
    _short_string(name, value)
    if is_event_format(value):
        raise InvalidEvent(
            f"attribute {name!r} is {value!r}, a CloudEvents event format: such data cannot "
            "travel in binary mode (send the inner event itself)"
        )


def _uri(name: str, value: str) -> None:
    _nonempty(name, value)
    if not is_uri(value):
        raise InvalidEvent(f"attribute {name!r} is not an absolute URI: {value!r}")


def _timestamp(name: str, value: str) -> None:
    if not is_rfc3339(value):
        raise InvalidEvent(f"attribute {name!r} is not an RFC 3339 timestamp: {value!r}")


def _content_encoding(name: str, value: str) -> None:
    if value != "base64":
        raise InvalidEvent(f"attribute {name!r} must be 'base64', got {value!r}")


def _any_string(name: str, value: str) -> None:
    return None


_Check = Callable[[str, str], None]

#: Per spec version: each core attribute and the check its (string) value must pass.
_CORE: dict[str, dict[str, _Check]] = {
    "1.0": {
        "specversion": _any_string,
        "id": _id,
        "source": _source,
        "type": _nonempty,
        "datacontenttype": _content_type,
        "dataschema": _uri,
        "subject": _nonempty,
        "time": _timestamp,
    },
    "0.3": {
        "specversion": _any_string,
        "id": _id,
        "source": _source,
        "type": _nonempty,
        "datacontenttype": _content_type,
        "datacontentencoding": _content_encoding,
        "schemaurl": _uri_reference,
        "subject": _nonempty,
        "time": _timestamp,
    },
}
_REQUIRED = ("id", "source", "type")


def check_extension_name(name: str) -> None:
    """Raise InvalidEvent unless `name` may name an extension attribute."""
    if name in _GOOD_NAMES:
        return
    if is_extension_name(name):
        if name == "data":
            raise InvalidEvent("attribute name 'data' is reserved")
        if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
            _GOOD_NAMES.add(name)
        return
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidEvent(
            f"extension name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters"
        )
    raise InvalidEvent(f"extension name {name!r} must be lowercase letters and digits")


def validate(attributes: Mapping[str, object]) -> None:
    """Raise InvalidEvent unless `attributes` form a valid CloudEvents 1.0 or 0.3 context.

    Values must already be decoded from the wire: str, bool, or int in the signed 32-bit
    range. Core attributes must be strings.
    """
    specversion = attributes.get("specversion")
    if specversion is None:
        raise InvalidEvent("attribute 'specversion' is missing")
    if type(specversion) is not str:
        raise InvalidEvent(
            f"attribute 'specversion' must be a string, not {type_name(specversion)}"
        )
    core = _CORE.get(specversion)
    if core is None:
        raise InvalidEvent(f"unknown specversion {specversion!r}")
    for required in _REQUIRED:
        if required not in attributes:
            raise InvalidEvent(f"attribute {required!r} is missing")

    for name, value in attributes.items():
        if type(value) is str:
            if not value.isprintable():
                _check_string_chars(name, value)
            check = core.get(name)
            if check is not None:
                check(name, value)
            elif name not in _GOOD_NAMES:
                check_extension_name(name)
        elif name in core:
            if not isinstance(value, str):
                raise InvalidEvent(f"attribute {name!r} must be a string, not {type_name(value)}")
            value = str(value)
            _check_string_chars(name, value)
            core[name](name, value)
        else:
            check_extension_name(name)
            _check_extension_value(name, value)


def _check_extension_value(name: str, value: object) -> None:
    if value is True or value is False:
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidEvent(
                f"attribute {name!r}: integer {value} is outside the signed 32-bit range"
            )
    elif isinstance(value, str):
        _check_string_chars(name, value)
    else:
        raise InvalidEvent(
            f"attribute {name!r} must be a string, integer or boolean, not {type_name(value)}"
        )
