"""Trigger filters: spec.filter.attributes and the spec.filters dialects."""

from __future__ import annotations

from typing import Any

import pytest

from rabbitmesh.filters import (
    MATCH_ALL,
    AttributesFilter,
    EventFilter,
    FilterError,
    compile_filters,
    compile_trigger_filter,
)

EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "https://example.com/orders",
    "type": "com.example.order.created",
    "subject": "order-42",
    "time": "2024-06-13T10:00:00Z",
    "datacontenttype": "application/json",
    "region": "eu-west",
    "sequence": 7,
    "priority": "",
    "urgent": True,
}


def matches(filters: list[dict[str, Any]], event: dict[str, Any] | None = None) -> bool:
    return compile_filters(filters).matches(EVENT if event is None else event)


# -- spec.filter.attributes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, True),
        ({"type": "com.example.order.created"}, True),
        ({"type": "com.example.order.deleted"}, False),
        ({"type": "com.example.order.created", "source": "https://example.com/orders"}, True),
        ({"type": "com.example.order.created", "source": "other"}, False),
        ({"region": "eu-west"}, True),  # extension present
        ({"color": "red"}, False),  # extension absent
        ({"region": ""}, True),  # "" = present with any non-empty value
        ({"color": ""}, False),  # ... so absent fails
        ({"priority": ""}, False),  # ... and present-but-empty fails
        ({"sequence": "7"}, True),  # integers compare by their decimal string
        ({"sequence": "07"}, False),
        ({"urgent": "true"}, True),  # booleans compare as true/false
        ({"urgent": "True"}, False),
        ({"sequence": ""}, True),
    ],
)
def test_attributes_filter(attrs: dict[str, str], expected: bool) -> None:
    flt = AttributesFilter(attrs)
    assert flt.matches(EVENT) is expected
    assert compile_trigger_filter(attrs, None).matches(EVENT) is expected


@pytest.mark.parametrize(
    ("attrs", "path", "fragment"),
    [
        ({"Type": "x"}, "spec.filter.attributes.Type", "invalid attribute name 'Type'"),
        ({"1abc": "x"}, "spec.filter.attributes.1abc", "starting with a letter"),
        ({"my-ext": "x"}, "spec.filter.attributes.my-ext", "lowercase letters and digits"),
        ({"": "x"}, "spec.filter.attributes['']", "invalid attribute name ''"),
        ({"region\n": "x"}, "spec.filter.attributes['region\\n']", "invalid attribute name"),
        ({"type": 5}, "spec.filter.attributes.type", "expected a string value, got int"),
        ({"type": None}, "spec.filter.attributes.type", "got null"),
    ],
)
def test_attributes_filter_validation(attrs: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_trigger_filter(attrs, None)
    assert info.value.path == path
    assert fragment in info.value.message
    assert str(info.value) == f"{path}: {info.value.message}"
    assert isinstance(info.value, ValueError)


def test_attributes_filter_rejects_non_mapping() -> None:
    with pytest.raises(FilterError, match=r"^spec\.filter\.attributes: expected an object"):
        AttributesFilter(["type"])  # type: ignore[arg-type]


# -- exact / prefix / suffix -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"exact": {"type": "com.example.order.created"}}], True),
        ([{"exact": {"type": "com.example.order"}}], False),
        ([{"exact": {"type": "com.example.order.created", "region": "eu-west"}}], True),
        ([{"exact": {"type": "com.example.order.created", "region": "us"}}], False),
        ([{"exact": {"color": "red"}}], False),  # missing extension fails
        ([{"exact": {"sequence": "7"}}], True),
        ([{"exact": {"urgent": "true"}}], True),
        ([{"prefix": {"type": "com.example."}}], True),
        ([{"prefix": {"type": "com.other."}}], False),
        ([{"prefix": {"type": "com.", "source": "https://"}}], True),
        ([{"prefix": {"type": "com.", "source": "http://"}}], False),
        ([{"prefix": {"color": "r"}}], False),
        ([{"prefix": {"region": "eu"}}], True),
        ([{"suffix": {"type": ".created"}}], True),
        ([{"suffix": {"type": ".deleted"}}], False),
        ([{"suffix": {"source": "/orders", "subject": "-42"}}], True),
        ([{"suffix": {"color": "d"}}], False),
        ([{"suffix": {"sequence": "7"}}], True),
    ],
)
def test_string_dialects(filters: list[dict[str, Any]], expected: bool) -> None:
    assert matches(filters) is expected


# -- all / any / not / nesting ---------------------------------------------------------------

EXACT_YES = {"exact": {"type": "com.example.order.created"}}
EXACT_NO = {"exact": {"type": "nope"}}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], True),
        ([EXACT_YES], True),
        ([EXACT_YES, EXACT_NO], False),  # the top-level list is an AND
        ([{"all": [EXACT_YES, {"prefix": {"type": "com."}}]}], True),
        ([{"all": [EXACT_YES, EXACT_NO]}], False),
        ([{"any": [EXACT_NO, EXACT_YES]}], True),
        ([{"any": [EXACT_NO, EXACT_NO]}], False),
        ([{"not": EXACT_NO}], True),
        ([{"not": EXACT_YES}], False),
        ([{"not": {"not": EXACT_YES}}], True),
        ([{"any": [{"all": [EXACT_YES, {"not": EXACT_NO}]}, EXACT_NO]}], True),
        ([{"all": [{"any": [EXACT_NO, {"suffix": {"type": "d"}}]}, {"not": EXACT_NO}]}], True),
        ([{"not": {"any": [EXACT_NO, {"exact": {"color": "red"}}]}}], True),
        # empty all/any are neutral, as in Knative (an empty list is no filter at all)
        ([{"all": []}], True),
        ([{"any": []}], True),
        ([{"not": {"any": []}}], True),
        ([{"not": {"all": []}}], True),
        ([{"any": [EXACT_NO, {"any": []}]}], False),  # ignored inside any
        ([{"any": [EXACT_YES, {"all": []}]}], True),
        ([{"all": [EXACT_NO, {"all": []}]}], False),
        ([{"any": []}, EXACT_NO], False),
    ],
)
def test_composite_dialects(filters: list[dict[str, Any]], expected: bool) -> None:
    assert matches(filters) is expected


# -- cesql -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("type LIKE 'com.example.%' AND EXISTS subject", True),
        ("sequence > 5 AND urgent", True),
        ("region = 'us'", False),
        ("color = 'red'", False),  # missing attribute: error, no match
        ("NOT (color = 'red')", False),  # the error survives NOT
        ("int(subject) > 1", False),  # cast error: no match
        ("subject", False),  # a String result is not a match (CESQL spec 1.2)
        ("sequence", False),
        ("NOT 10", False),  # true, but with a cast error
        ("EXISTS color OR region LIKE 'eu-%'", True),
    ],
)
def test_cesql_dialect(expression: str, expected: bool) -> None:
    assert matches([{"cesql": expression}]) is expected


def test_cesql_is_compiled_once_and_reused() -> None:
    flt = compile_filters([{"cesql": "int(sequence) > 5"}])
    assert [flt.matches({"sequence": str(n)}) for n in range(4, 8)] == [False, False, True, True]
    assert "int(sequence) > 5" in repr(flt)


# -- trigger-level choice ------------------------------------------------------------------------


def test_filters_override_attributes() -> None:
    flt = compile_trigger_filter({"type": "nope"}, [{"prefix": {"type": "com.example."}}])
    assert flt.matches(EVENT) is True


@pytest.mark.parametrize("filters", [None, []])
def test_empty_filters_fall_back_to_attributes(filters: list[dict[str, Any]] | None) -> None:
    assert compile_trigger_filter({"type": "nope"}, filters).matches(EVENT) is False
    assert compile_trigger_filter({"type": EVENT["type"]}, filters).matches(EVENT) is True


@pytest.mark.parametrize(("attrs", "filters"), [(None, None), ({}, None), ({}, []), (None, [])])
def test_no_filter_matches_everything(attrs: dict[str, str] | None, filters: Any) -> None:
    flt = compile_trigger_filter(attrs, filters)
    assert flt is MATCH_ALL and flt.matches({}) is True


def test_overridden_attributes_are_still_validated() -> None:
    with pytest.raises(FilterError) as info:
        compile_trigger_filter({"Bad": "x"}, [EXACT_YES])
    assert info.value.path == "spec.filter.attributes.Bad"


def test_compiled_filters_satisfy_the_protocol() -> None:
    for flt in (
        MATCH_ALL,
        AttributesFilter({"type": "x"}),
        compile_filters([EXACT_YES, {"any": [EXACT_NO, {"not": EXACT_NO}]}, {"cesql": "TRUE"}]),
        compile_filters([{"suffix": {"type": "d"}}]),
        compile_filters([{"prefix": {"type": "c"}}]),
    ):
        assert isinstance(flt, EventFilter)
        assert isinstance(flt.matches(EVENT), bool)
        assert repr(flt)


def test_matching_does_not_depend_on_dict_type() -> None:
    class Attributes(dict[str, Any]):
        pass

    assert compile_filters([EXACT_YES]).matches(Attributes(EVENT)) is True


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "path", "message"),
    [
        ([{}], "spec.filters[0]", "exactly one dialect per filter, got none"),
        (
            [{"exact": {"type": "a"}, "prefix": {"type": "b"}}],
            "spec.filters[0]",
            "exactly one dialect per filter, got 'exact', 'prefix'",
        ),
        (
            [EXACT_YES, {"sql": "TRUE"}],
            "spec.filters[1]",
            "unknown dialect 'sql'; expected one of exact, prefix, suffix, all, any, not, cesql",
        ),
        ("x", "spec.filters", "expected a list of filter objects, got str"),
        ({"exact": {}}, "spec.filters", "expected a list of filter objects, got an object"),
        (["exact"], "spec.filters[0]", "expected a filter object, got str"),
        ([{"exact": ["type"]}], "spec.filters[0].exact", "expected an object mapping"),
        ([{"exact": {}}], "spec.filters[0].exact", "expected at least one attribute"),
        ([{"prefix": {"": "x"}}], "spec.filters[0].prefix", "attribute name must not be empty"),
        ([{"suffix": {"type": ""}}], "spec.filters[0].suffix.type", "value must not be empty"),
        ([{"exact": {"type": 1}}], "spec.filters[0].exact.type", "expected a string value"),
        ([{"exact": {"Type": "a"}}], "spec.filters[0].exact.Type", "invalid attribute name 'Type'"),
        (
            [EXACT_YES, {"all": [{"exact": {"type": True}}]}],
            "spec.filters[1].all[0].exact.type",
            "expected a string value, got bool",
        ),
        (
            [{"any": [EXACT_YES, {"not": [EXACT_YES]}]}],
            "spec.filters[0].any[1].not",
            "expected a single filter object, got a list",
        ),
        ([{"not": {}}], "spec.filters[0].not", "exactly one dialect per filter, got none"),
        ([{"all": EXACT_YES}], "spec.filters[0].all", "expected a list of filter objects"),
        ([{"any": "x"}], "spec.filters[0].any", "expected a list of filter objects, got str"),
        ([{"cesql": 5}], "spec.filters[0].cesql", "expected a CESQL expression string, got int"),
        ([{"cesql": "  "}], "spec.filters[0].cesql", "expression must not be empty"),
        (
            [{"all": [{"cesql": "type = "}]}],
            "spec.filters[0].all[0].cesql",
            "invalid CESQL expression 'type = ': parse error: at column 8: "
            "expected an expression, found end of input",
        ),
    ],
)
def test_filters_validation(filters: Any, path: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_trigger_filter(None, filters)
    assert info.value.path == path
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}: ")


def test_error_string_format() -> None:
    with pytest.raises(FilterError) as info:
        compile_filters([{"exact": {"type": "a"}, "prefix": {"type": "b"}}])
    expected = "spec.filters[0]: exactly one dialect per filter, got 'exact', 'prefix'"
    assert str(info.value) == expected
