"""Compile a CESQL AST into a tree of Python closures.

Each node becomes one closure `fn(attributes, errors) -> value`; all dispatch on node type,
operator, function overload, LIKE pattern and constant operands happens here, once, so
evaluating is just calling closures. Sub-trees that read no attribute are folded into
constants at compile time (their errors, if any, are replayed at each evaluation).

Error semantics (spec 3.2/3.3, as the TCK pins them down):

* an operator or function whose *operand* evaluation recorded any error returns the zero
  value of its return type without computing (`missing / 0` is `0` with only a
  missingAttribute error; `1 != 1 / 0` is `false`);
* errors of the operator's *own* casts or arithmetic do not stop it: the failed cast yields
  the zero value and the operator goes on (`NOT 10` is `true` with a cast error), division
  by zero yields 0, overflow is clamped to the 32-bit range with a math error;
* a missing attribute evaluates to `false` (the spec's default type) with its error;
* AND/OR short-circuit left to right.

Errors are detected by comparing the error list's length before and after evaluating the
operands, which keeps the success path allocation-free.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from rabbitmesh.cesql.casting import (
    CASTS,
    INT32_MAX,
    INT32_MIN,
    ZERO,
    normalize,
    to_bool,
    to_int,
    to_str,
)
from rabbitmesh.cesql.errors import CesqlError
from rabbitmesh.cesql.functions import Function, known_arities, resolve
from rabbitmesh.cesql.like import compile_like
from rabbitmesh.cesql.parser import (
    Binary,
    Call,
    Exists,
    Identifier,
    In,
    Like,
    Literal,
    Node,
    Unary,
)

Evaluator = Callable[[Mapping[str, Any], list[CesqlError]], Any]

_EMPTY: Final[Mapping[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class _Compiled:
    fn: Evaluator
    pure: bool  # reads no attribute, so it can be folded
    const: tuple[Any] | None = None  # (value,) when constant and error-free


def compile_node(node: Node) -> Evaluator:
    """The evaluator closure of a parsed expression."""
    return _compile(node).fn


def _compile(node: Node) -> _Compiled:
    compiled = _COMPILERS[type(node)](node)
    if compiled.pure and compiled.const is None:
        return _fold(compiled.fn)
    return compiled


def _fold(fn: Evaluator) -> _Compiled:
    errors: list[CesqlError] = []
    value = fn(_EMPTY, errors)
    if not errors:
        return _Compiled(_constant(value), True, (value,))
    replay = tuple(errors)

    def folded(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
        e.extend(replay)
        return value

    return _Compiled(folded, True)


def _constant(value: Any) -> Evaluator:
    def constant(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
        return value

    return constant


# -- leaves --------------------------------------------------------------------------------


def _missing(name: str, pos: int) -> CesqlError:
    return CesqlError("missingAttribute", f"attribute {name!r} is not present", pos)


def _literal(node: Literal) -> _Compiled:
    return _Compiled(_constant(node.value), True, (node.value,))


def _identifier(node: Identifier) -> _Compiled:
    name, missing = node.name, _missing(node.name, node.pos)

    def attribute(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
        v = a.get(name)
        if v.__class__ is str:
            return v
        if v is None:
            e.append(missing)
            return False
        return normalize(v)

    return _Compiled(attribute, False)


def _exists(node: Exists) -> _Compiled:
    name = node.name

    def exists(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        return a.get(name) is not None

    return _Compiled(exists, False)


# -- unary ---------------------------------------------------------------------------------


def _unary(node: Unary) -> _Compiled:
    operand = _compile(node.operand)
    f = operand.fn
    if node.op == "NOT":

        def not_(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
            n = len(e)
            x = f(a, e)
            if len(e) != n:
                return False
            if x is True:
                return False
            if x is False:
                return True
            return not to_bool(x, e)

        return _Compiled(not_, operand.pure)

    def negate(a: Mapping[str, Any], e: list[CesqlError]) -> int:
        n = len(e)
        x = f(a, e)
        if len(e) != n:
            return 0
        if x.__class__ is not int:
            x = to_int(x, e)
        if x == INT32_MIN:
            e.append(CesqlError("math", f"-({INT32_MIN}) overflows 32 bits; result clamped"))
            return INT32_MAX
        return -x

    return _Compiled(negate, operand.pure)


# -- binary --------------------------------------------------------------------------------


def _binary(node: Binary) -> _Compiled:
    op = node.op
    if op == "AND":
        return _and(node)
    left, right = _compile(node.left), _compile(node.right)
    pure = left.pure and right.pure
    if op == "OR":
        return _Compiled(_or(left.fn, right.fn), pure)
    if op == "XOR":
        return _Compiled(_xor(left.fn, right.fn), pure)
    if op in ("=", "!=", "<>"):
        return _Compiled(_equality(left, right, negate=op != "="), pure)
    if op in _COMPARE:
        return _Compiled(_comparison(left, right, _COMPARE[op]), pure)
    return _Compiled(_arithmetic(left, right, _ARITHMETIC[op]), pure)


def _conjuncts(node: Node) -> list[Node]:
    """Operands of a chain of ANDs, in evaluation order (AND is associative here too)."""
    if isinstance(node, Binary) and node.op == "AND":
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _and(node: Binary) -> _Compiled:
    # A flattened AND chain returns false on the first false operand or the first error:
    # exactly what the nested binary ANDs give, with one closure call instead of n - 1.
    operands = [_compile(child) for child in _conjuncts(node)]
    fns = tuple(c.fn for c in operands)

    def and_(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        for f in fns:
            x = f(a, e)
            if x is not True:
                if x is not False:
                    x = to_bool(x, e)
                if not x:
                    return False
            if len(e) != n:
                return False
        return True

    return _Compiled(and_, all(c.pure for c in operands))


def _or(lf: Evaluator, rf: Evaluator) -> Evaluator:
    def or_(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        x = lf(a, e)
        if len(e) != n:
            return False
        if x.__class__ is not bool:
            x = to_bool(x, e)
        if x:
            return True
        m = len(e)
        y = rf(a, e)
        if len(e) != m:
            return False
        if y.__class__ is not bool:
            y = to_bool(y, e)
        return y is True

    return or_


def _xor(lf: Evaluator, rf: Evaluator) -> Evaluator:
    def xor(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        x = lf(a, e)
        y = rf(a, e)
        if len(e) != n:
            return False
        if x.__class__ is not bool:
            x = to_bool(x, e)
        if y.__class__ is not bool:
            y = to_bool(y, e)
        return x is not y

    return xor


def _equality(left: _Compiled, right: _Compiled, *, negate: bool) -> Evaluator:
    """`=` casts the left operand to the right operand's type (spec 3.7, ambiguous binary)."""
    lf, rf = left.fn, right.fn
    if right.const is not None:
        c = right.const[0]
        ctype = c.__class__
        cast = CASTS[ctype]

        def equal_const(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
            n = len(e)
            x = lf(a, e)
            if len(e) != n:
                return False
            if x.__class__ is not ctype:
                x = cast(x, e)
            return (x == c) is not negate

        return equal_const

    def equal(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        x = lf(a, e)
        y = rf(a, e)
        if len(e) != n:
            return False
        ytype = y.__class__
        if x.__class__ is not ytype:
            x = CASTS[ytype](x, e)
        return (x == y) is not negate

    return equal


_COMPARE: Final[dict[str, Callable[[int, int], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _comparison(left: _Compiled, right: _Compiled, cmp: Callable[[int, int], bool]) -> Evaluator:
    """`<` `<=` `>` `>=` are defined on Integers only: both operands are cast to Integer."""
    lf, rf = left.fn, right.fn
    if right.const is not None and right.const[0].__class__ is int:
        c = right.const[0]

        def compare_const(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
            n = len(e)
            x = lf(a, e)
            if len(e) != n:
                return False
            if x.__class__ is not int:
                x = to_int(x, e)
            return cmp(x, c)

        return compare_const

    def compare(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        x = lf(a, e)
        y = rf(a, e)
        if len(e) != n:
            return False
        if x.__class__ is not int:
            x = to_int(x, e)
        if y.__class__ is not int:
            y = to_int(y, e)
        return cmp(x, y)

    return compare


def _clamped(value: int, what: str, e: list[CesqlError]) -> int:
    e.append(CesqlError("math", f"{what} overflows 32 bits; result clamped"))
    return INT32_MAX if value > INT32_MAX else INT32_MIN


def _add(x: int, y: int, e: list[CesqlError]) -> int:
    r = x + y
    return r if INT32_MIN <= r <= INT32_MAX else _clamped(r, f"{x} + {y}", e)


def _sub(x: int, y: int, e: list[CesqlError]) -> int:
    r = x - y
    return r if INT32_MIN <= r <= INT32_MAX else _clamped(r, f"{x} - {y}", e)


def _mul(x: int, y: int, e: list[CesqlError]) -> int:
    r = x * y
    return r if INT32_MIN <= r <= INT32_MAX else _clamped(r, f"{x} * {y}", e)


def _div(x: int, y: int, e: list[CesqlError]) -> int:
    if y == 0:
        e.append(CesqlError("math", f"division by zero: {x} / 0"))
        return 0
    q = abs(x) // abs(y)  # truncated towards zero, unlike Python's floor division
    if (x < 0) is not (y < 0):
        q = -q
    return q if q <= INT32_MAX else _clamped(q, f"{x} / {y}", e)


def _mod(x: int, y: int, e: list[CesqlError]) -> int:
    if y == 0:
        e.append(CesqlError("math", f"modulo by zero: {x} % 0"))
        return 0
    r = abs(x) % abs(y)  # the remainder takes the dividend's sign
    return -r if x < 0 else r


_ARITHMETIC: Final[dict[str, Callable[[int, int, list[CesqlError]], int]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}


def _arithmetic(
    left: _Compiled, right: _Compiled, fn: Callable[[int, int, list[CesqlError]], int]
) -> Evaluator:
    lf, rf = left.fn, right.fn

    def arithmetic(a: Mapping[str, Any], e: list[CesqlError]) -> int:
        n = len(e)
        x = lf(a, e)
        y = rf(a, e)
        if len(e) != n:
            return 0
        if x.__class__ is not int:
            x = to_int(x, e)
        if y.__class__ is not int:
            y = to_int(y, e)
        return fn(x, y, e)

    return arithmetic


# -- LIKE, IN ------------------------------------------------------------------------------


def _like(node: Like) -> _Compiled:
    operand = _compile(node.operand)
    matches, negate, f = compile_like(node.pattern), node.negate, operand.fn
    if isinstance(node.operand, Identifier):
        # The common `attr LIKE 'x%'` reads the attribute inline: one closure call.
        name, missing = node.operand.name, _missing(node.operand.name, node.operand.pos)

        def like_attribute(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
            x = a.get(name)
            if x.__class__ is not str:
                if x is None:
                    e.append(missing)
                    return False
                x = to_str(normalize(x))
            return matches(x) is not negate

        return _Compiled(like_attribute, False)

    def like(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        x = f(a, e)
        if len(e) != n:
            return False
        if x.__class__ is not str:
            x = to_str(x)
        return matches(x) is not negate

    return _Compiled(like, operand.pure)


def _in(node: In) -> _Compiled:
    """`x IN (...)`: each element is cast to x's runtime type, then compared with `=`."""
    operand = _compile(node.operand)
    items = [_compile(item) for item in node.items]
    f, negate = operand.fn, node.negate
    pure = operand.pure and all(i.pure for i in items)

    if all(i.const is not None for i in items):
        # Cast the constant set once per possible type of x, errors included.
        values = [i.const[0] for i in items if i.const is not None]
        by_type: dict[type, tuple[frozenset[Any], tuple[CesqlError, ...]]] = {}
        for target, cast in CASTS.items():
            errors: list[CesqlError] = []
            cast_values = frozenset(v if v.__class__ is target else cast(v, errors) for v in values)
            by_type[target] = (cast_values, tuple(errors))

        def in_const(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
            n = len(e)
            x = f(a, e)
            if len(e) != n:
                return False
            members, cast_errors = by_type[x.__class__]
            if cast_errors:
                e.extend(cast_errors)
                if negate:  # NOT IN is NOT (x IN ...): an inner error yields false
                    return False
            return (x in members) is not negate

        return _Compiled(in_const, pure)

    fns = tuple(i.fn for i in items)

    def in_(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        n = len(e)
        x = f(a, e)
        ys = [g(a, e) for g in fns]
        if len(e) != n:
            return False
        xtype = x.__class__
        cast = CASTS[xtype]
        found = False
        for y in ys:
            if y.__class__ is not xtype:
                y = cast(y, e)
            if y == x:
                found = True
        if negate:
            return not found and len(e) == n
        return found

    return _Compiled(in_, pure)


# -- functions -----------------------------------------------------------------------------


def _call(node: Call) -> _Compiled:
    args = [_compile(arg) for arg in node.args]
    pure = all(arg.pure for arg in args)
    fn = resolve(node.name, len(args))
    if fn is None:
        return _Compiled(_missing_function(node), pure)
    fns = tuple(arg.fn for arg in args)
    casts = tuple(_cast_for(fn, i) for i in range(len(args)))
    zero, impl = ZERO[fn.returns], fn.impl

    if len(fns) == 1 and isinstance(node.args[0], Identifier):
        # `INT(attr)` and friends read the attribute inline: one closure call.
        name, missing = node.args[0].name, _missing(node.args[0].name, node.args[0].pos)
        target, cast = casts[0] if casts[0] is not None else (None, None)

        def call_attribute(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
            x = a.get(name)
            if x.__class__ is not str:
                if x is None:
                    e.append(missing)
                    return zero
                x = normalize(x)
            if cast is not None and x.__class__ is not target:
                x = cast(x, e)
            return impl(e, x)

        return _Compiled(call_attribute, False)

    if len(fns) == 1 and casts[0] is None:
        (f,) = fns

        def call_any(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
            n = len(e)
            x = f(a, e)
            if len(e) != n:
                return zero
            return impl(e, x)

        return _Compiled(call_any, pure)

    if len(fns) == 1 and (pair := casts[0]) is not None:
        (f,), (target, cast) = fns, pair

        def call_one(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
            n = len(e)
            x = f(a, e)
            if len(e) != n:
                return zero
            if x.__class__ is not target:
                x = cast(x, e)
            return impl(e, x)

        return _Compiled(call_one, pure)

    def call(a: Mapping[str, Any], e: list[CesqlError]) -> Any:
        n = len(e)
        values = [g(a, e) for g in fns]
        if len(e) != n:
            return zero
        for i, pair in enumerate(casts):
            if pair is not None and values[i].__class__ is not pair[0]:
                values[i] = pair[1](values[i], e)
        return impl(e, *values)

    return _Compiled(call, pure)


def _cast_for(
    fn: Function, index: int
) -> tuple[type, Callable[[Any, list[CesqlError]], Any]] | None:
    target = fn.param_type(index)
    return None if target is None else (target, CASTS[target])


def _missing_function(node: Call) -> Evaluator:
    arities = known_arities(node.name)
    detail = f"; it takes {arities} argument(s)" if arities else ""
    error = CesqlError(
        "missingFunction",
        f"no function {node.name} with {len(node.args)} argument(s){detail}",
        node.pos,
    )

    def missing_function(a: Mapping[str, Any], e: list[CesqlError]) -> bool:
        e.append(error)
        return False

    return missing_function


_COMPILERS: Final[dict[type, Callable[[Any], _Compiled]]] = {
    Literal: _literal,
    Identifier: _identifier,
    Exists: _exists,
    Unary: _unary,
    Binary: _binary,
    Like: _like,
    In: _in,
    Call: _call,
}
