"""Knative's `spec.filters`: the CloudEvents Subscriptions API filter dialects.

Each filter object has exactly one dialect key:

* `exact` / `prefix` / `suffix`: {attribute: value}, every entry must hold on the attribute's
  string form; a missing attribute fails. Names and values must be non-empty strings.
* `all`: a list of filters, all must match. `any`: a list, at least one must match.
* `not`: one filter object, inverted.
* `cesql`: a CESQL expression, compiled once; it matches only on a Boolean `true` without
  any evaluation error (CESQL spec 1.2; a non-Boolean result never matches).

The top-level list is an `all`.

Empty `all: []` / `any: []` are *neutral*, as in Knative (where an empty list counts as no
filter): they match on their own, at the top level and under `not`, and are ignored inside
an enclosing `all`/`any`. So `all: []` behaves as true wherever that is meaningful, and
`any: [{exact: ...}, {any: []}]` is just the `exact`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from rabbitmesh.cesql import CesqlError, Expression, compile_expression
from rabbitmesh.cesql.casting import attribute_string
from rabbitmesh.filters.attributes import AttributesFilter, check_attribute_name, describe_type
from rabbitmesh.filters.base import MATCH_ALL, EventFilter
from rabbitmesh.filters.errors import FilterError, child_path

DIALECTS: Final = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")
#: Deepest nesting of all/any/not. Compiling, matching and deriving binding keys recurse
#: once per level, so without a bound a deep enough filter raises RecursionError.
MAX_NESTING: Final = 64

Check = Callable[[Mapping[str, Any]], bool]


class _StringFilter:
    """Shared body of exact/prefix/suffix: a test on each named attribute's string form.

    Every named attribute must be present and pass `test`; the subclasses differ in `test`
    only."""

    __slots__ = ("attributes",)
    dialect: str = ""

    def __init__(self, attributes: Mapping[str, str]) -> None:
        self.attributes = tuple(attributes.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.attributes)!r})"

    @staticmethod
    def test(value: str, wanted: str) -> bool:
        raise NotImplementedError

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        get, test = attributes.get, self.test
        for name, wanted in self.attributes:
            value = get(name)
            if value is None:
                return False
            if value.__class__ is not str:
                value = attribute_string(value)
            if not test(value, wanted):
                return False
        return True


class ExactFilter(_StringFilter):
    __slots__ = ()
    dialect = "exact"

    @staticmethod
    def test(value: str, wanted: str) -> bool:
        return value == wanted


class PrefixFilter(_StringFilter):
    __slots__ = ()
    dialect = "prefix"

    @staticmethod
    def test(value: str, wanted: str) -> bool:
        return value.startswith(wanted)


class SuffixFilter(_StringFilter):
    __slots__ = ()
    dialect = "suffix"

    @staticmethod
    def test(value: str, wanted: str) -> bool:
        return value.endswith(wanted)


class AllFilter:
    __slots__ = ("filters", "_checks")

    def __init__(self, filters: list[EventFilter]) -> None:
        self.filters = tuple(filters)
        self._checks: tuple[Check, ...] = tuple(f.matches for f in filters)

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        for check in self._checks:
            if not check(attributes):
                return False
        return True

    def __repr__(self) -> str:
        return f"AllFilter({list(self.filters)!r})"


class AnyFilter:
    __slots__ = ("filters", "_checks")

    def __init__(self, filters: list[EventFilter]) -> None:
        self.filters = tuple(filters)
        self._checks: tuple[Check, ...] = tuple(f.matches for f in filters)

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        for check in self._checks:
            if check(attributes):
                return True
        return False

    def __repr__(self) -> str:
        return f"AnyFilter({list(self.filters)!r})"


class NotFilter:
    __slots__ = ("filter", "_check")

    def __init__(self, inner: EventFilter) -> None:
        self.filter = inner
        self._check: Check = inner.matches

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return not self._check(attributes)

    def __repr__(self) -> str:
        return f"NotFilter({self.filter!r})"


class CesqlFilter:
    __slots__ = ("expression", "matches")

    def __init__(self, expression: Expression) -> None:
        self.expression = expression
        # The bound method itself: no extra call layer per event.
        self.matches: Check = expression.matches

    def __repr__(self) -> str:
        return f"CesqlFilter({self.expression.source!r})"


def compile_filters(filters: object, path: str = "spec.filters") -> EventFilter:
    """Validate and compile a `spec.filters` list (an implicit `all`); raises FilterError."""
    children = _compile_list(filters, path)
    if children is None or not children:
        return MATCH_ALL
    return children[0] if len(children) == 1 else AllFilter(children)


def _compile_list(filters: object, path: str, depth: int = 0) -> list[EventFilter] | None:
    """The compiled non-neutral members of a filter list; None when the list is neutral."""
    if not isinstance(filters, list | tuple):
        raise FilterError(path, f"expected a list of filter objects, got {describe_type(filters)}")
    compiled = [_compile_one(item, f"{path}[{i}]", depth) for i, item in enumerate(filters)]
    children = [c for c in compiled if c is not None]
    return children or None


def _compile_one(item: object, path: str, depth: int = 0) -> EventFilter | None:
    """One filter object; None means neutral (see the module docstring)."""
    if depth > MAX_NESTING:
        raise FilterError(path, f"filters are nested more than {MAX_NESTING} levels deep")
    dialect, value = dialect_of(item, path)
    where = f"{path}.{dialect}"
    if dialect in ("exact", "prefix", "suffix"):
        attributes = _attribute_values(value, where)
        if dialect == "exact":
            return ExactFilter(attributes)
        return PrefixFilter(attributes) if dialect == "prefix" else SuffixFilter(attributes)
    if dialect in ("all", "any"):
        children = _compile_list(value, where, depth + 1)
        if children is None:
            return None
        if len(children) == 1:
            return children[0]
        return AllFilter(children) if dialect == "all" else AnyFilter(children)
    if dialect == "not":
        if not isinstance(value, Mapping):
            raise FilterError(where, f"expected a single filter object, got {describe_type(value)}")
        inner = _compile_one(value, where, depth + 1)
        return None if inner is None else NotFilter(inner)
    return CesqlFilter(compile_cesql(value, where))


def dialect_of(item: object, path: str) -> tuple[str, Any]:
    """The single (dialect, value) of a filter object; FilterError unless exactly one."""
    if not isinstance(item, Mapping):
        raise FilterError(path, f"expected a filter object, got {describe_type(item)}")
    unknown = [key for key in item if key not in DIALECTS]
    if unknown:
        raise FilterError(
            path,
            f"unknown dialect {unknown[0]!r}; expected one of {', '.join(DIALECTS)}",
        )
    if len(item) != 1:
        found = ", ".join(repr(key) for key in item) or "none"
        raise FilterError(path, f"exactly one dialect per filter, got {found}")
    ((dialect, value),) = item.items()
    return dialect, value


def _attribute_values(value: object, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise FilterError(
            path,
            f"expected an object mapping attribute names to values, got {describe_type(value)}",
        )
    if not value:
        raise FilterError(path, "expected at least one attribute")
    for name, expected in value.items():
        if name == "":
            raise FilterError(path, "attribute name must not be empty")
        check_attribute_name(name, child_path(path, name))
        if not isinstance(expected, str):
            raise FilterError(
                child_path(path, name), f"expected a string value, got {describe_type(expected)}"
            )
        if expected == "":
            raise FilterError(child_path(path, name), "value must not be empty")
    return dict(value)


def compile_cesql(value: object, path: str) -> Expression:
    """A `cesql` dialect's expression, compiled; FilterError with the parser's position."""
    if not isinstance(value, str):
        raise FilterError(path, f"expected a CESQL expression string, got {describe_type(value)}")
    if not value.strip():
        raise FilterError(path, "expression must not be empty")
    try:
        return compile_expression(value)
    except CesqlError as exc:
        raise FilterError(path, f"invalid CESQL expression {value!r}: {exc}") from None


def uses_filters(filters: object) -> bool:
    """Whether `spec.filters` is set and non-empty, so that it overrides `spec.filter`."""
    return filters is not None and not (isinstance(filters, list | tuple) and len(filters) == 0)


def compile_trigger_filter(
    filter_attributes: Mapping[str, str] | None, filters: list[dict[str, Any]] | None
) -> EventFilter:
    """A Trigger's effective filter; raises FilterError for any invalid part.

    A non-empty `spec.filters` overrides `spec.filter.attributes`; `filters: []` or None falls
    back to the attributes; neither matches everything. Both parts are validated, as
    Knative's webhook does, even when one of them is overridden.
    """
    attributes = None if filter_attributes is None else AttributesFilter(filter_attributes)
    if uses_filters(filters):
        return compile_filters(filters)
    if attributes is None or not attributes.attributes:
        return MATCH_ALL
    return attributes
