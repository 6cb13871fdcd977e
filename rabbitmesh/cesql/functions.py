"""CESQL built-in functions (spec section 3.5) and their resolution by name and arity.

Each implementation takes the error list first, then its arguments already cast to the
declared parameter types, and always returns a value of its declared return type (spec
3.5.3), recording its own errors in the list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from rabbitmesh.cesql.casting import (
    INT32_MAX,
    INT32_MIN,
    parse_int,
    to_bool_explicit,
    to_int,
    to_str,
)
from rabbitmesh.cesql.errors import CesqlError

#: Unicode White_Space characters: what TRIM removes (spec: "whitespace as defined by
#: unicode", explicitly not other control characters, which str.strip() would also drop).
UNICODE_WHITESPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True, slots=True)
class Function:
    """A built-in. `params` are the fixed parameter types (None = any type, no cast);
    `rest` is the type of variadic extra arguments, when the function is variadic."""

    name: str
    params: tuple[type | None, ...]
    returns: type
    impl: Callable[..., Any]
    variadic: bool = False
    rest: type | None = None

    def param_type(self, index: int) -> type | None:
        return self.params[index] if index < len(self.params) else self.rest


def _evaluation_error(function: str, message: str) -> CesqlError:
    return CesqlError("functionEvaluation", f"{function}: {message}")


def _length(errors: list[CesqlError], x: str) -> int:
    return len(x)


def _concat(errors: list[CesqlError], *parts: str) -> str:
    return "".join(parts)


def _concat_ws(errors: list[CesqlError], delimiter: str, *parts: str) -> str:
    return delimiter.join(parts)


def _lower(errors: list[CesqlError], x: str) -> str:
    return x.lower()


def _upper(errors: list[CesqlError], x: str) -> str:
    return x.upper()


def _trim(errors: list[CesqlError], x: str) -> str:
    return x.strip(UNICODE_WHITESPACE)


def _left(errors: list[CesqlError], x: str, n: int) -> str:
    if n < 0:
        errors.append(_evaluation_error("LEFT", f"length must not be negative, got {n}"))
        return x
    return x[:n]


def _right(errors: list[CesqlError], x: str, n: int) -> str:
    if n < 0:
        errors.append(_evaluation_error("RIGHT", f"length must not be negative, got {n}"))
        return x
    return x[len(x) - n :] if n < len(x) else x


def _start(errors: list[CesqlError], x: str, pos: int) -> int | None:
    """0-based start index of SUBSTRING, or None after recording why there is none."""
    size = len(x)
    if pos > size or pos < -size:
        errors.append(
            _evaluation_error("SUBSTRING", f"position {pos} is outside the string of length {size}")
        )
        return None
    return pos - 1 if pos > 0 else size + pos


def _substring(errors: list[CesqlError], x: str, pos: int) -> str:
    start = _start(errors, x, pos)
    if start is None or pos == 0:
        return ""
    return x[start:]


def _substring_len(errors: list[CesqlError], x: str, pos: int, length: int) -> str:
    if length < 0:
        errors.append(_evaluation_error("SUBSTRING", f"length must not be negative, got {length}"))
        return ""
    start = _start(errors, x, pos)
    if start is None or pos == 0:
        return ""
    return x[start : start + length]


def _abs(errors: list[CesqlError], x: int) -> int:
    if x == INT32_MIN:
        errors.append(CesqlError("math", f"ABS({INT32_MIN}) overflows 32 bits; result clamped"))
        return INT32_MAX
    return abs(x)


def _int(errors: list[CesqlError], x: Any) -> int:
    return to_int(x, errors)


def _bool(errors: list[CesqlError], x: Any) -> bool:
    return to_bool_explicit(x, errors)


def _string(errors: list[CesqlError], x: Any) -> str:
    return to_str(x)


def _is_bool(errors: list[CesqlError], x: str) -> bool:
    return x.lower() in ("true", "false")


def _is_int(errors: list[CesqlError], x: str) -> bool:
    return parse_int(x) is not None


BUILTINS: Final[tuple[Function, ...]] = (
    Function("LENGTH", (str,), int, _length),
    Function("CONCAT", (), str, _concat, variadic=True, rest=str),
    Function("CONCAT_WS", (str,), str, _concat_ws, variadic=True, rest=str),
    Function("LOWER", (str,), str, _lower),
    Function("UPPER", (str,), str, _upper),
    Function("TRIM", (str,), str, _trim),
    Function("LEFT", (str, int), str, _left),
    Function("RIGHT", (str, int), str, _right),
    Function("SUBSTRING", (str, int), str, _substring),
    Function("SUBSTRING", (str, int, int), str, _substring_len),
    Function("ABS", (int,), int, _abs),
    Function("INT", (None,), int, _int),
    Function("BOOL", (None,), bool, _bool),
    Function("STRING", (None,), str, _string),
    Function("IS_BOOL", (str,), bool, _is_bool),
    Function("IS_INT", (str,), bool, _is_int),
)

_BY_NAME: Final[dict[str, tuple[Function, ...]]] = {}
for _fn in BUILTINS:
    _BY_NAME[_fn.name] = (*_BY_NAME.get(_fn.name, ()), _fn)


def resolve(name: str, arity: int) -> Function | None:
    """The built-in `name` (case-insensitive) callable with `arity` arguments, if any.

    A fixed-arity overload wins over a variadic one, as the spec's overloading rules imply.
    """
    candidates = _BY_NAME.get(name.upper(), ())
    for fn in candidates:
        if not fn.variadic and len(fn.params) == arity:
            return fn
    for fn in candidates:
        if fn.variadic and arity >= len(fn.params):
            return fn
    return None


def known_arities(name: str) -> str:
    """Human description of how `name` may be called, for missingFunction messages."""
    candidates = _BY_NAME.get(name.upper(), ())
    shapes = [
        f"at least {len(fn.params)}" if fn.variadic else str(len(fn.params)) for fn in candidates
    ]
    return " or ".join(shapes)
