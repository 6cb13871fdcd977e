"""Fuzzing CESQL: random text, grammar-guided expressions with mutations, random events.

The rules: `compile_expression` raises only CesqlParseError; evaluation never raises and
returns a str/int/bool (ints within 32 bits) with errors of the spec's kinds; `evaluate`
agrees with compile-then-evaluate; and no input costs more than a few milliseconds, even
a LIKE pattern with many `%` against a long attribute value.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rabbitmesh.cesql import (
    ERROR_KINDS,
    CesqlError,
    CesqlParseError,
    Expression,
    compile_expression,
    evaluate,
)
from tests.fuzz.conftest import counted, fuzz_settings, within_cpu

INT32 = (-(2**31), 2**31 - 1)
#: CPU time to compile and evaluate one expression of up to a few hundred characters.
BOUND = 0.05

NAMES = ["type", "source", "id", "subject", "sequence", "flag", "n", "missing", "a1", "Type"]
BAD_NAMES = ["1abc", "a_b", "_x", "é"]
FUNCTIONS = [
    "LENGTH",
    "CONCAT",
    "CONCAT_WS",
    "LOWER",
    "UPPER",
    "TRIM",
    "LEFT",
    "RIGHT",
    "SUBSTRING",
    "ABS",
    "INT",
    "BOOL",
    "STRING",
    "IS_BOOL",
    "IS_INT",
    "length",
    "Nope",
    "F_2",
    "2F",
]
BINARY_OPS = ["AND", "OR", "XOR", "and", "=", "!=", "<>", "<", "<=", ">", ">=", "+", "-", "*"]
BINARY_OPS += ["/", "%", "LIKE", "IN", "NOT LIKE", "NOT IN", "NOT", "==", "!", "||"]

INTEGER_LITERALS = st.one_of(
    st.integers(-5, 20).map(str),
    st.sampled_from(["2147483647", "-2147483648", "2147483648", "-2147483649", "0000012"]),
    st.sampled_from(["99999999999999999999999", "+5", "- 3", "--1", "1e3", "0x10"]),
)


def _quote(text: str, quote: str) -> str:
    return quote + text.replace(quote, "\\" + quote) + quote


STRING_CONTENT = st.one_of(
    st.text(alphabet="ab%_\\'\" .1é\n", max_size=10),
    st.sampled_from(["true", "FALSE", "12", "-7", "2147483648", "", " 1 ", "\u0085"]),
)
STRING_LITERALS = st.one_of(
    st.tuples(STRING_CONTENT, st.sampled_from(["'", '"'])).map(lambda t: _quote(*t)),
    STRING_CONTENT.map(lambda t: f"'{t}'"),  # unescaped: may end early or never
    STRING_CONTENT.map(lambda t: "'" + t.replace("'", "''") + "'"),
)
LIKE_PATTERNS = st.one_of(
    st.text(alphabet="ab%_\\.", max_size=12),
    st.sampled_from(["%a%a%a%a%a%a%b", "%_%_%_%_%_%_%x", "a%", "%a", "%a%", r"\%%\_", "%"]),
).map(lambda p: "'" + p.replace("'", "''") + "'")

ATOMS = st.one_of(
    INTEGER_LITERALS,
    STRING_LITERALS,
    st.sampled_from(["TRUE", "FALSE", "true", "False"]),
    st.sampled_from(NAMES + BAD_NAMES),
    st.sampled_from(NAMES + BAD_NAMES + ["", "TRUE", "(type)"]).map(lambda n: f"EXISTS {n}"),
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(BINARY_OPS), children).map(" ".join),
        st.tuples(children, st.sampled_from(BINARY_OPS[:16]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(st.sampled_from(["NOT ", "-", "+", "NOT NOT ", "- -"]), children).map("".join),
        st.tuples(children, st.sampled_from(["LIKE", "NOT LIKE"]), LIKE_PATTERNS).map(" ".join),
        st.tuples(
            children,
            st.sampled_from(["IN", "NOT IN", "in"]),
            st.lists(children, max_size=4),
        ).map(lambda t: f"{t[0]} {t[1]} ({', '.join(t[2])})"),
        st.tuples(st.sampled_from(FUNCTIONS), st.lists(children, max_size=4)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.tuples(st.integers(1, 60), children).map(lambda t: "(" * t[0] + t[1] + ")" * t[0]),
    )


GRAMMAR = st.recursive(ATOMS, _extend, max_leaves=12)
TOKENS = st.sampled_from(
    [" ", "(", ")", ",", "'", '"', "\\", "%", "_", "!", "=", "<", ">", "-", "+", "*", "/"]
    + ["NOT", "AND", "LIKE", "IN", "EXISTS", "TRUE", "1", "type", "INT(", "\t", "\n", "é", "#"]
)


def _mutate(expression: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply (position, length to delete, text to insert) edits."""
    for at, drop, insert in edits:
        at %= len(expression) + 1
        expression = expression[:at] + insert + expression[at + drop :]
    return expression


MUTATED = st.tuples(
    GRAMMAR,
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.one_of(TOKENS, st.just(""))),
        min_size=1,
        max_size=4,
    ),
).map(lambda t: _mutate(*t))

EXPRESSIONS = st.one_of(
    GRAMMAR,
    MUTATED,
    st.text(alphabet=string.printable, max_size=60),
    st.text(max_size=30),
    st.lists(TOKENS, max_size=30).map("".join),
)

ATTRIBUTE_VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["true", "false", "TRUE", "12", "-2147483648", "2147483648", " 7", ""]),
    st.integers(-(2**33), 2**33),
    st.booleans(),
    st.none(),
)
ATTRIBUTES = st.dictionaries(
    st.sampled_from(NAMES + ["specversion", "datacontenttype"]), ATTRIBUTE_VALUES, max_size=8
)


def check_result(value: Any, errors: list[CesqlError], *, parse_allowed: bool) -> None:
    assert type(value) in (str, int, bool), value
    if type(value) is int:
        assert INT32[0] <= value <= INT32[1]
    assert type(errors) is list
    for error in errors:
        assert isinstance(error, CesqlError)
        assert error.kind in ERROR_KINDS
        assert parse_allowed or error.kind != "parse"
        assert str(error)


def compile_or_reject(expression: str) -> Expression | None:
    try:
        return compile_expression(expression)
    except CesqlParseError as e:
        assert e.kind == "parse"
        assert e.position is not None and 0 <= e.position <= len(expression)
        assert "\n" not in str(e)  # one line: filters put it in a status condition
        return None


@fuzz_settings("cesql")
@given(expression=EXPRESSIONS, attributes=ATTRIBUTES)
@counted
def test_compile_and_evaluate_are_total(expression: str, attributes: dict[str, Any]) -> None:
    def body() -> None:
        compiled = compile_or_reject(expression)
        if compiled is None:
            value, errors = evaluate(expression, attributes)
            assert value is False
            assert [e.kind for e in errors] == ["parse"]
            return
        value, errors = compiled.evaluate(attributes)
        check_result(value, errors, parse_allowed=False)
        assert compiled.matches(attributes) is (value is True and not errors)
        again, again_errors = evaluate(expression, attributes)
        assert again == value and type(again) is type(value)
        assert [e.kind for e in again_errors] == [e.kind for e in errors]

    within_cpu(BOUND, f"CESQL {expression!r}", body)


@fuzz_settings("cesql", light=True)
@given(
    pattern=st.one_of(
        st.lists(st.sampled_from(["%", "a", "b", "_", "\\%", "ab"]), max_size=16).map("".join),
        st.integers(2, 12).map(lambda n: "%a" * n + "%b"),
    ),
    value=st.tuples(st.sampled_from(["a", "ab", "ba", "_", "%"]), st.integers(0, 3000)).map(
        lambda t: t[0] * t[1]
    ),
    negate=st.booleans(),
)
@counted
def test_like_against_long_values_is_fast(pattern: str, value: str, negate: bool) -> None:
    """Attribute values come from senders: no pattern may make matching them explode."""
    source = f"x {'NOT ' if negate else ''}LIKE '{pattern}'"
    compiled = compile_expression(source)
    result, errors = within_cpu(
        BOUND, f"{source} on {len(value)} characters", lambda: compiled.evaluate({"x": value})
    )
    assert type(result) is bool and errors == []
    assert result is (_like_reference(value, pattern) is not negate)


def _like_reference(value: str, pattern: str) -> bool:
    """LIKE by dynamic programming: obviously right, and quadratic at worst."""
    tokens: list[str | None] = []  # None: %, "" : _, else one literal character
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            tokens.append(pattern[i + 1])
            i += 2
            continue
        tokens.append(None if c == "%" else ("" if c == "_" else c))
        i += 1
    reach = [True] + [False] * len(value)  # reach[j]: tokens so far can match value[:j]
    for token in tokens:
        if token is None:
            for j in range(1, len(value) + 1):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [
                reach[j - 1] and (token == "" or value[j - 1] == token)
                for j in range(1, len(value) + 1)
            ]
    return reach[-1]


@fuzz_settings("cesql", light=True)
@given(
    depth=st.integers(1, 3000),
    shape=st.sampled_from(["(", "NOT ", "-", "+ 1", " AND TRUE", "ABS(", "x IN (", "CONCAT('a',"]),
)
@counted
def test_deep_nesting_is_bounded(depth: int, shape: str) -> None:
    """Very deep or very long expressions compile, or fail as parse errors, quickly."""
    if shape in ("(", "ABS(", "x IN (", "CONCAT('a',"):
        expression = shape * depth + "1" + ")" * depth
    elif shape in ("NOT ", "-"):
        expression = shape * depth + "1"
    else:
        expression = "1" + shape * depth

    def body() -> None:
        compiled = compile_or_reject(expression)
        if compiled is not None:
            value, errors = compiled.evaluate({"x": "1"})
            check_result(value, errors, parse_allowed=False)

    within_cpu(max(BOUND, depth * 0.0002), f"{shape!r} nested {depth} deep", body)
