"""CESQL engine cases beyond the TCK: precedence, escapes, errors, reuse, totality, unicode."""

from __future__ import annotations

import pickle
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitmesh.cesql import (
    ERROR_KINDS,
    CesqlError,
    CesqlParseError,
    Expression,
    compile_expression,
    evaluate,
)

EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "1",
    "source": "/src",
    "type": "com.example.created",
    "subject": "order-42",
    "sequence": "7",
}


def value_of(expression: str, attributes: dict[str, Any] | None = None) -> Any:
    value, errors = evaluate(expression, EVENT if attributes is None else attributes)
    assert errors == [], f"{expression!r}: {errors}"
    return value


def kinds_of(expression: str, attributes: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    value, errors = evaluate(expression, EVENT if attributes is None else attributes)
    return value, [e.kind for e in errors]


# -- precedence (spec 3.6) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("10 - 4 - 3", 3),  # left to right
        ("100 / 10 / 5", 2),
        ("2 * 3 % 4", 2),
        ("-2 * 3", -6),
        ("- (2 + 3)", -5),
        ("NOT TRUE AND FALSE", False),  # (NOT TRUE) AND FALSE
        ("NOT (TRUE AND FALSE)", True),
        ("TRUE = 'a' LIKE 'a'", True),  # LIKE binds tighter than =
        ("1 + 1 IN (2)", 1),  # IN binds tighter than +: 1 + (1 IN (2)) = 1 + 0
        ("(1 + 1) IN (2)", True),
        ("1 < 2 AND 3 > 2", True),  # comparison binds tighter than AND
        ("TRUE OR TRUE AND FALSE", False),  # AND/OR share one level, left to right
        ("FALSE AND FALSE OR TRUE", True),
        ("TRUE XOR TRUE OR TRUE", True),
        ("2 + 2 = 4", True),
        ("NOT 'x' LIKE 'x'", False),  # (NOT 'x') -> cast error, false LIKE 'x'
    ],
)
def test_precedence(expression: str, expected: Any) -> None:
    value, _ = evaluate(expression, EVENT)
    assert type(value) is type(expected) and value == expected


def test_not_binds_before_like_with_its_cast_error() -> None:
    assert kinds_of("NOT 'x' LIKE 'x'") == (False, ["cast"])


# -- literals and escapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        ("'it''s'", "it's"),
        ('"a""b"', 'a"b'),
        (r"'a\"b'", 'a\\"b'),  # \" is not an escape inside '...'
        (r"'a\\b'", "a\\\\b"),  # a backslash pair is kept verbatim
        (r"'a\nb'", "a\\nb"),  # no C escapes: backslash-n stays two characters
        ("'tab\there'", "tab\there"),  # a raw tab inside a literal is kept
        ("+5", 5),
        ("-2147483648", -2147483648),
        ("2147483647", 2147483647),
        ("007", 7),
        ("'日本語'", "日本語"),
        ("'😀'", "😀"),
    ],
)
def test_literals(expression: str, expected: Any) -> None:
    assert value_of(expression) == expected


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ("50%", r"50\%", True),
        ("500", r"50\%", False),
        ("a_c", r"a\_c", True),
        ("abc", r"a\_c", False),
        ("a\\b", r"a\b", True),  # backslash before anything else is literal
        ("a.c", "a.c", True),  # regex metacharacters are literal
        ("abc", "a.c", False),
        ("(x)", "(%)", True),
        ("a+b", "a+_", True),
        ("abc", "%b%", True),
        ("abc", "%", True),
        ("", "%", True),
        ("", "", True),
        ("", "_", False),
        ("a\nb", "a%b", True),  # % and _ match newlines too
        ("a\nb", "a_b", True),
        ("ab", "a%%b", True),
        ("abcabc", "%bc%bc", True),
        ("日本語", "日_語", True),
        ("日本語", "日%", True),
        ("ABC", "abc", False),  # case sensitive
    ],
)
def test_like(value: str, pattern: str, expected: bool) -> None:
    assert value_of(f"x LIKE '{pattern}'", {"x": value}) is expected
    assert value_of(f"x NOT LIKE '{pattern}'", {"x": value}) is (not expected)


# -- semantics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "attributes", "expected", "kinds"),
    [
        ("sequence = 5", {"sequence": 5}, True, []),
        ("sequence = 5", {"sequence": "05"}, True, []),
        ("sequence = 5", {"sequence": "abc"}, False, ["cast"]),
        ("5 = '05'", {}, False, []),  # the left side is cast to the right side's type
        ("'05' = 5", {}, True, []),
        ("flag = TRUE", {"flag": "TRUE"}, True, []),
        ("flag", {"flag": True}, True, []),
        ("INT('+5')", {}, 5, []),
        ("INT(' 5')", {}, 0, ["cast"]),
        ("INT('٣')", {}, 0, ["cast"]),  # only ASCII digits
        ("INT('2147483648')", {}, 0, ["cast"]),
        ("INT('-2147483648')", {}, -2147483648, []),
        ("INT('99999999999999999999999')", {}, 0, ["cast"]),
        ("BOOL('TrUe')", {}, True, []),
        ("IS_BOOL('False')", {}, True, []),
        ("IS_BOOL('yes')", {}, False, []),
        ("IS_INT('-12')", {}, True, []),
        ("IS_INT('1.5')", {}, False, []),
        ("2147483647 + 1", {}, 2147483647, ["math"]),
        ("-2147483648 - 1", {}, -2147483648, ["math"]),
        ("65536 * 65536", {}, 2147483647, ["math"]),
        ("-2147483648 / -1", {}, 2147483647, ["math"]),
        ("-(-2147483648)", {}, 2147483647, ["math"]),
        ("-7 / 2", {}, -3, []),  # truncated division
        ("-7 % 2", {}, -1, []),  # remainder has the dividend's sign
        ("7 % -2", {}, 1, []),
        ("'abc' + 1", {}, 1, ["cast"]),  # a failed cast yields 0 and evaluation goes on
        ("FALSE AND missing", {}, False, []),  # short circuit
        ("TRUE OR missing", {}, True, []),
        ("missing OR TRUE", {}, False, ["missingAttribute"]),
        ("FALSE XOR missing", {}, False, ["missingAttribute"]),
        ("EXISTS x", {"x": None}, False, []),  # None counts as absent
        ("x", {"x": None}, False, ["missingAttribute"]),
        ("type IN (a, b)", {"type": "t", "a": "u", "b": "t"}, True, []),
        ("1 NOT IN (2, 3)", {}, True, []),
        ("'a' NOT IN ('a')", {}, False, []),
        ("1 IN ('x', 1)", {}, True, ["cast"]),
        ("1 NOT IN ('x', 2)", {}, False, ["cast"]),
        ("FOO(1)", {}, False, ["missingFunction"]),
        ("LENGTH()", {}, False, ["missingFunction"]),
        ("LENGTH('héllo')", {}, 5, []),
        ("LENGTH('😀')", {}, 1, []),
        ("UPPER('straße')", {}, "STRASSE", []),
        ("TRIM('\u3000 a \u00a0')", {}, "a", []),
        ("TRIM('\x1fa')", {}, "\x1fa", []),  # control characters are not whitespace
        ("LEFT('abc', 0)", {}, "", []),
        ("RIGHT('abc', 0)", {}, "", []),
        ("SUBSTRING('', 0)", {}, "", []),
        ("SUBSTRING('abc', 2, -1)", {}, "", ["functionEvaluation"]),
        ("CONCAT(1, TRUE, 'x')", {}, "1truex", []),
        ("CONCAT_WS('-', 'a', 2)", {}, "a-2", []),
        ("LENGTH(missing)", {}, 0, ["missingAttribute"]),
        ("ABS('x')", {}, 0, ["cast"]),
        ("tRuE aNd NoT fAlSe", {}, True, []),
        ("lower('AB') = 'ab' AND Concat_Ws(',', 'a') = 'a'", {}, True, []),
        ("SUBJECT", {"subject": "s"}, "s", []),
    ],
)
def test_semantics(
    expression: str, attributes: dict[str, Any], expected: Any, kinds: list[str]
) -> None:
    value, errors = evaluate(expression, attributes)
    assert type(value) is type(expected) and value == expected, (value, errors)
    assert [e.kind for e in errors] == kinds


def test_attribute_types_are_read_as_cesql_values() -> None:
    plus_two = timezone(timedelta(hours=2))
    attributes = {
        "time": datetime(2018, 4, 26, 14, 48, 9, tzinfo=plus_two),
        "utc": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "big": 2**40,
        "raw": b"\x00\x01",
        "other": 1.5,
    }
    assert value_of("time", attributes) == "2018-04-26T14:48:09+02:00"
    assert value_of("utc", attributes) == "2024-01-02T03:04:05Z"
    assert value_of("big", attributes) == str(2**40)  # not a 32-bit Integer
    assert value_of("raw", attributes) == "AAE="
    assert value_of("other", attributes) == "1.5"
    assert value_of("time LIKE '2018-%'", attributes) is True


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "column", "fragment"),
    [
        ("a = ", 5, "expected an expression, found end of input"),
        ("(1 + 2", 7, "expected ')' to close the parenthesis opened at column 1"),
        ("x LIKE 123", 8, "string literal pattern"),
        ("1 2", 3, "found integer 2"),
        ("a # b", 3, "unexpected character '#'"),
        ("a ! b", 3, "'!' must be followed by '='"),
        ("'abc", 1, "unterminated string literal"),
        ("2147483648", 1, "outside the 32-bit range"),
        ("-2147483649", 2, "outside the 32-bit range"),
        ("x IN ()", 7, "at least one value"),
        ("x IN 1", 6, "parenthesized list"),
        ("x IN (1, 2", 11, "in the IN list"),
        ("x NOT y", 7, "expected LIKE or IN after NOT"),
        ("", 1, "empty"),
        ("   ", 4, "empty"),
        ("foo_bar = 1", 1, "invalid attribute name 'foo_bar'"),
        ("abc1(2)", 1, "invalid function name 'abc1'"),
        ("EXISTS 'a'", 8, "EXISTS must be followed by an attribute name"),
        ("CONCAT('a' 'b')", 12, "expected ',' or ')' in the arguments of CONCAT"),
        ("café = 1", 4, "unexpected character 'é'"),
        ("+x", 2, "'+' as a sign"),
    ],
)
def test_parse_errors_name_the_column(expression: str, column: int, fragment: str) -> None:
    with pytest.raises(CesqlParseError) as info:
        compile_expression(expression)
    error = info.value
    assert isinstance(error, CesqlError) and isinstance(error, ValueError)
    assert error.kind == "parse"
    assert error.column == column and error.position == column - 1
    assert f"column {column}" in str(error)
    assert fragment in str(error)
    assert str(error).startswith("parse error: at column")
    value, errors = evaluate(expression, EVENT)
    assert value is False and [e.kind for e in errors] == ["parse"]


def test_error_objects() -> None:
    error = CesqlError("missingAttribute", "attribute 'x' is not present")
    assert str(error) == "missing attribute error: attribute 'x' is not present"
    assert "missingAttribute" in repr(error)
    with pytest.raises(ValueError, match="unknown CESQL error kind"):
        CesqlError("bogus", "x")
    assert ERROR_KINDS == {
        "parse",
        "math",
        "cast",
        "missingFunction",
        "functionEvaluation",
        "missingAttribute",
        "generic",
    }
    with pytest.raises(CesqlParseError) as info:
        compile_expression("1 +")
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is CesqlParseError and str(clone) == str(info.value)
    assert clone.column == info.value.column


def test_runtime_error_messages_are_readable() -> None:
    _, errors = evaluate("missing = 1 OR 1 / 0 = 0", {})
    assert [str(e) for e in errors] == [
        "missing attribute error: attribute 'missing' is not present"
    ]
    _, errors = evaluate("LEFT('abc', -1)", {})
    assert str(errors[0]) == "function evaluation error: LEFT: length must not be negative, got -1"
    _, errors = evaluate("FOO(1, 2)", {})
    assert str(errors[0]) == "missing function error: no function FOO with 2 argument(s)"
    _, errors = evaluate("INT('x')", {})
    assert str(errors[0]) == "cast error: cannot cast String 'x' to Integer"


# -- compiled form ---------------------------------------------------------------------------


def test_compiled_expression_is_reused() -> None:
    expr = compile_expression("type LIKE 'com.example.%' AND EXISTS subject AND int(sequence) > 5")
    assert isinstance(expr, Expression)
    assert expr.source == "type LIKE 'com.example.%' AND EXISTS subject AND int(sequence) > 5"
    assert "com.example" in repr(expr)
    cases = [
        (EVENT, True, []),
        ({**EVENT, "sequence": "3"}, False, []),
        ({**EVENT, "type": "org.other"}, False, []),
        ({k: v for k, v in EVENT.items() if k != "subject"}, False, []),
        ({k: v for k, v in EVENT.items() if k != "sequence"}, False, ["missingAttribute"]),
        ({**EVENT, "sequence": "x"}, False, ["cast"]),
    ]
    for _ in range(3):
        for attributes, expected, kinds in cases:
            frozen = dict(attributes)
            value, errors = expr.evaluate(attributes)
            assert value is expected and [e.kind for e in errors] == kinds
            assert attributes == frozen  # never mutated
            assert expr.matches(attributes) is (expected and not kinds)


def test_constant_subexpressions_replay_their_errors_each_time() -> None:
    expr = compile_expression("x = 1 / 0")
    for _ in range(2):
        value, errors = expr.evaluate({"x": "0"})
        assert value is False and [e.kind for e in errors] == ["math"]


def test_matches_needs_boolean_true_without_errors() -> None:
    assert compile_expression("subject").matches(EVENT) is False  # a String, not a Boolean
    assert compile_expression("NOT 10").matches(EVENT) is False  # true, but with a cast error
    assert compile_expression("TRUE").matches(EVENT) is True


def test_compiled_expression_is_thread_safe() -> None:
    expr = compile_expression("int(sequence) % 2 = 1 AND type LIKE 'com.%'")
    results: list[bool] = []

    def worker(parity: int) -> None:
        for i in range(2000):
            value, errors = expr.evaluate({"sequence": str(2 * i + parity), "type": "com.x"})
            results.append(value is bool(parity) and not errors)

    threads = [threading.Thread(target=worker, args=(p,)) for p in (0, 1, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8000 and all(results)


# -- totality --------------------------------------------------------------------------------

_ATOMS = st.sampled_from(
    [
        "1",
        "0",
        "-3",
        "2147483647",
        "-2147483648",
        "TRUE",
        "false",
        "'abc'",
        '"7"',
        "''",
        "type",
        "sequence",
        "missing",
        "flag",
        "n",
        "EXISTS subject",
        "EXISTS nope",
    ]
)
_FUNCTIONS = st.sampled_from(
    [
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
        "NOPE",
    ]
)
_BINARY = st.sampled_from(
    [
        "AND",
        "OR",
        "XOR",
        "=",
        "!=",
        "<>",
        "<",
        "<=",
        ">",
        ">=",
        "+",
        "-",
        "*",
        "/",
        "%",
    ]
)


def _expressions() -> st.SearchStrategy[str]:
    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(children, _BINARY, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            children.map(lambda c: f"NOT {c}"),
            children.map(lambda c: f"-{c}"),
            st.tuples(children, st.sampled_from(["'a%'", "'_b'", "'%'", r"'\%x'"])).map(
                lambda t: f"{t[0]} LIKE {t[1]}"
            ),
            st.tuples(children, st.lists(children, min_size=1, max_size=3)).map(
                lambda t: f"{t[0]} NOT IN ({', '.join(t[1])})"
            ),
            st.tuples(_FUNCTIONS, st.lists(children, max_size=3)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"
            ),
        )

    return st.recursive(_ATOMS, extend, max_leaves=12)


_VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.booleans(),
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.binary(max_size=4),
    st.floats(allow_nan=True),
)


@settings(max_examples=400, deadline=None)
@given(
    _expressions(),
    st.dictionaries(st.sampled_from(["type", "sequence", "flag", "n", "subject"]), _VALUES),
)
def test_well_formed_expressions_evaluate_totally(
    expression: str, attributes: dict[str, Any]
) -> None:
    expr = compile_expression(expression)
    value, errors = expr.evaluate(attributes)
    assert type(value) in (str, int, bool)
    if type(value) is int:
        assert -(2**31) <= value < 2**31
    assert all(isinstance(e, CesqlError) and e.kind in ERROR_KINDS for e in errors)
    assert expr.matches(attributes) is (value is True and not errors)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(list("ab1 ()'\"\\%_-+*/=<>!,.éN") + [" NOT ", " IN ", " LIKE "])))
def test_arbitrary_text_never_raises_from_evaluate(pieces: list[str]) -> None:
    text = "".join(pieces)
    value, errors = evaluate(text, EVENT)
    assert type(value) in (str, int, bool)
    assert all(e.kind in ERROR_KINDS for e in errors)
    if errors and errors[0].kind == "parse":
        assert value is False


def test_evaluate_is_total_for_odd_inputs() -> None:
    assert evaluate(None, EVENT)[1][0].kind == "parse"  # type: ignore[arg-type]
    assert evaluate(["x"], EVENT)[1][0].kind == "parse"  # type: ignore[arg-type]
    value, errors = evaluate("type", None)  # type: ignore[arg-type]
    assert value is False and errors[0].kind == "generic"
    assert compile_expression("type").matches(None) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expression",
    ["1" + " + 1" * 5000, "(" * 3000 + "1" + ")" * 3000, "NOT " * 3000 + "TRUE"],
)
def test_absurd_nesting_is_a_parse_error(expression: str) -> None:
    with pytest.raises(CesqlParseError, match="nested too deeply"):
        compile_expression(expression)
    value, errors = evaluate(expression, EVENT)
    assert value is False and [e.kind for e in errors] == ["parse"]


def test_reasonable_nesting_compiles() -> None:
    assert value_of("x" + " + x" * 150, {"x": "1"}) == 151
    assert value_of("(" * 40 + "TRUE" + ")" * 40) is True
