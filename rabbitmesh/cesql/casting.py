"""CESQL values and casts (spec sections 3.1, 3.2 and 3.7).

Runtime values are exactly `str`, `int` (32-bit range) and `bool`. A failed cast records a
cast error and yields the target type's zero value ("" / 0 / false), and evaluation goes on
with it: that is what the TCK expects (`NOT 10` is `true` with a cast error).

Implicit Integer -> Boolean casts are cast errors (TCK: `NOT 10`); the explicit `BOOL(x)`
function does cast integers (non-zero is true), as the spec's cast table says.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any, Final

from rabbitmesh.cesql.errors import CesqlError

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

#: The zero value of each CESQL type (spec 3.1).
ZERO: Final[dict[type, Any]] = {str: "", int: 0, bool: False}

_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]+\Z")
_TYPE_NAMES: Final = {str: "String", int: "Integer", bool: "Boolean"}


def type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:64] + "...")


def _cast_error(value: object, target: str, why: str = "") -> CesqlError:
    shown = _shown(value) if isinstance(value, str) else repr(value)
    return CesqlError("cast", f"cannot cast {type_name(value)} {shown} to {target}{why}")


def parse_int(text: str) -> int | None:
    """`text` as a 32-bit base-10 integer with an optional sign, or None."""
    if _INTEGER_TEXT.match(text) is None:
        return None
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10:  # also keeps int() away from huge inputs
        return None
    value = int(text)
    return value if INT32_MIN <= value <= INT32_MAX else None


def to_int(value: Any, errors: list[CesqlError]) -> int:
    """Implicit or explicit cast to Integer."""
    cls = value.__class__
    if cls is int:
        return value
    if cls is bool:
        return 1 if value else 0
    if cls is str:
        if len(value) < 10 and value.isdigit() and value.isascii():
            return int(value)  # fast path: up to 9 ASCII digits always fit
        parsed = parse_int(value)
        if parsed is not None:
            return parsed
        why = "" if _INTEGER_TEXT.match(value) is None else " (outside the 32-bit range)"
        errors.append(_cast_error(value, "Integer", why))
        return 0
    errors.append(_cast_error(value, "Integer"))
    return 0


def to_bool(value: Any, errors: list[CesqlError]) -> bool:
    """Implicit cast to Boolean: only strings "true"/"false" (any case) convert."""
    cls = value.__class__
    if cls is bool:
        return value
    if cls is str:
        lowered = value.lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    errors.append(_cast_error(value, "Boolean"))
    return False


def to_bool_explicit(value: Any, errors: list[CesqlError]) -> bool:
    """BOOL(x): like the implicit cast, plus Integer -> Boolean (non-zero is true)."""
    if value.__class__ is int:
        return value != 0
    return to_bool(value, errors)


def to_str(value: Any, errors: list[CesqlError] | None = None) -> str:
    """Cast to String; never fails (the `errors` parameter keeps the cast signature uniform)."""
    cls = value.__class__
    if cls is str:
        return value
    if cls is bool:
        return "true" if value else "false"
    return str(value)


#: Cast function per target type, for the operators that cast to a runtime-chosen type.
CASTS: Final[dict[type, Callable[[Any, list[CesqlError]], Any]]] = {
    str: to_str,
    int: to_int,
    bool: to_bool,
}


def normalize(value: Any) -> str | int | bool:
    """An attribute value as a CESQL value: str/int/bool stay, anything else becomes a String.

    Integers outside 32 bits cannot be CESQL Integers, so they become their decimal string.
    Timestamps use ISO 8601 / RFC 3339 (UTC as `Z`), binary values base64, as CloudEvents
    renders them.
    """
    cls = value.__class__
    if cls is str or cls is bool:
        return value
    if cls is int:
        return value if INT32_MIN <= value <= INT32_MAX else str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return normalize(int(value))
    if isinstance(value, datetime | date | time):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def attribute_string(value: Any) -> str:
    """The string form of an attribute value, as exact/prefix/suffix filters compare it."""
    if value.__class__ is str:
        return value
    return to_str(normalize(value))
