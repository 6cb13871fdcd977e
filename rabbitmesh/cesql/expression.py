"""The public face of the engine: compile once, evaluate many times, never raise."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from rabbitmesh.cesql.errors import CesqlError, CesqlParseError
from rabbitmesh.cesql.evaluator import Evaluator, compile_node
from rabbitmesh.cesql.parser import Node, parse


class Expression:
    """A compiled CESQL expression. `source` keeps the text, `ast` the parse tree."""

    __slots__ = ("source", "ast", "_fn")

    def __init__(self, source: str, ast: Node, fn: Evaluator) -> None:
        self.source = source
        self.ast = ast
        self._fn = fn

    def evaluate(self, attributes: Mapping[str, Any]) -> tuple[Any, list[CesqlError]]:
        """The value (str, int or bool) and the errors met; total, it never raises.

        `attributes` maps lower-case attribute names to str/int/bool (other values are read
        as strings); a name mapped to None counts as absent.
        """
        errors: list[CesqlError] = []
        try:
            value = self._fn(attributes, errors)
        except Exception as exc:  # totality is the contract
            errors.append(CesqlError("generic", f"evaluation failed: {exc!r}"))
            return False, errors
        return value, errors

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """Filter semantics (spec 1.2): true only for a Boolean true without any error."""
        errors: list[CesqlError] = []
        try:
            return self._fn(attributes, errors) is True and not errors
        except Exception:  # a filter that cannot decide does not match
            return False

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(expression: str) -> Expression:
    """Parse and compile `expression`; raises CesqlParseError (a CesqlError / ValueError)."""
    try:
        ast = parse(expression)
        return Expression(expression, ast, compile_node(ast))
    except RecursionError:
        # Parser and compiler recurse per nesting level; absurd nesting is a syntax limit.
        raise CesqlParseError("expression is nested too deeply", 0, expression) from None


@lru_cache(maxsize=512)
def _cached(expression: str) -> Expression:
    return compile_expression(expression)


def evaluate(expression: str, attributes: Mapping[str, Any]) -> tuple[Any, list[CesqlError]]:
    """Evaluate `expression` against `attributes`; total, it never raises.

    A parse error gives `(False, [error])`, `error.kind == "parse"`: false is the zero value
    the TCK expects (`x LIKE 123` -> false, parse) and what a filter needs.
    """
    try:
        compiled = _cached(expression)
    except CesqlError as exc:
        return False, [exc]
    except Exception as exc:  # e.g. an unhashable non-string expression
        return False, [CesqlError("parse", f"cannot compile {expression!r}: {exc}")]
    return compiled.evaluate(attributes)
