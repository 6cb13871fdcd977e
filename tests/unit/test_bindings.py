"""Binding keys and routing keys: narrow, and never missing an event the filter accepts."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rabbitmesh.filters import FilterError, binding_keys, compile_trigger_filter
from rabbitmesh.filters.bindings import routing_key_for_type


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching as RabbitMQ does it: '*' one word, '#' zero or more words.

    Words are split on '.'; RabbitMQ reads an empty routing key as zero words.
    """
    pattern = binding_key.split(".")
    words = routing_key.split(".") if routing_key else []

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(words)
        if pattern[i] == "#":
            return match(i + 1, j) or (j < len(words) and match(i, j + 1))
        if j == len(words):
            return False
        return pattern[i] in ("*", words[j]) and match(i + 1, j + 1)

    return match(0, 0)


@pytest.mark.parametrize(
    ("binding", "routing", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "", True),
        ("a.#", "a.", True),
        ("a.b", "a.b.", False),
        ("a*b", "axb", False),  # only whole-word * is a wildcard
        ("a*b", "a*b", True),
    ],
)
def test_topic_matcher(binding: str, routing: str, expected: bool) -> None:
    assert topic_matches(binding, routing) is expected


# -- routing keys ----------------------------------------------------------------------------


def test_routing_key_is_the_type_when_short() -> None:
    assert routing_key_for_type("com.example.created") == "com.example.created"
    exactly = "a." * 127 + "b"  # 255 bytes
    assert len(exactly.encode()) == 255
    assert routing_key_for_type(exactly) == exactly


def test_long_types_are_cut_after_their_last_dot_within_255_bytes() -> None:
    long_type = "com.example." + "x" * 250 + ".tail"
    key = routing_key_for_type(long_type)
    assert key == "com.example."
    head = "w" * 100 + "." + "v" * 100 + "." + "u" * 100
    assert routing_key_for_type(head) == "w" * 100 + "." + "v" * 100 + "."
    assert routing_key_for_type("x" * 300) == ""
    assert routing_key_for_type("é" * 200) == ""  # 400 bytes, no dot


def test_routing_key_counts_utf8_bytes() -> None:
    typ = "a." + "é" * 126 + ".b"  # 2 + 252 + 2 = 256 bytes, only 130 characters
    assert len(typ) < 255 < len(typ.encode())
    key = routing_key_for_type(typ)
    assert key == "a." + "é" * 126 + "."
    assert len(key.encode()) <= 255


# -- binding keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "filters", "expected"),
    [
        (None, None, ["#"]),
        ({}, [], ["#"]),
        ({"type": "com.example.a"}, None, ["com.example.a"]),
        ({"type": ""}, None, ["#"]),
        ({"source": "s"}, None, ["#"]),
        ({"type": "com.x", "source": "s"}, None, ["com.x"]),
        ({"type": "com.x"}, [{"exact": {"source": "s"}}], ["#"]),  # filters override
        ({"type": "com.x"}, [], ["com.x"]),
        (None, [{"exact": {"type": "com.example.a"}}], ["com.example.a"]),
        (None, [{"exact": {"type": "com.*.a"}}], ["#"]),  # would be a wildcard
        (None, [{"exact": {"type": "com.#"}}], ["#"]),
        (None, [{"exact": {"type": "com.a*b.#x"}}], ["com.a*b.#x"]),  # literal words
        (None, [{"exact": {"type": "a..b."}}], ["a..b."]),
        (None, [{"exact": {"type": "a." * 127 + "b"}}], ["a." * 127 + "b"]),
        (None, [{"exact": {"type": "a." * 128}}], ["#"]),  # 256 bytes
        (None, [{"prefix": {"type": "com.example."}}], ["com.example.#"]),
        (None, [{"prefix": {"type": "com.example"}}], ["#"]),
        (None, [{"prefix": {"type": "."}}], [".#"]),
        (None, [{"prefix": {"type": "a." * 100}}], ["a." * 100 + "#"]),  # 200 bytes
        (None, [{"prefix": {"type": "a." * 100 + "b."}}], ["#"]),  # 202 bytes
        (None, [{"prefix": {"type": "com.*."}}], ["#"]),
        (None, [{"prefix": {"source": "com."}}], ["#"]),
        (None, [{"suffix": {"type": ".a"}}], ["#"]),
        (None, [{"not": {"exact": {"type": "a"}}}], ["#"]),
        (None, [{"prefix": {"type": "a."}}, {"exact": {"type": "a.b"}}], ["a.b"]),
        (None, [{"all": [{"prefix": {"type": "a."}}, {"prefix": {"type": "a.b."}}]}], ["a.b.#"]),
        (None, [{"all": [{"all": [{"exact": {"type": "a.b"}}]}]}], ["a.b"]),
        (None, [{"any": [{"exact": {"type": "a"}}, {"prefix": {"type": "b."}}]}], ["a", "b.#"]),
        (None, [{"any": [{"exact": {"type": "a"}}, {"suffix": {"type": "b"}}]}], ["#"]),
        (None, [{"any": [{"exact": {"type": "a"}}, {"any": []}]}], ["a"]),  # neutral dropped
        (None, [{"any": []}], ["#"]),
        (None, [{"not": {"any": []}}, {"exact": {"type": "a"}}], ["a"]),
        (None, [{"cesql": "type = 'a.b'"}], ["a.b"]),
        (None, [{"cesql": "'a.b' = TYPE"}], ["a.b"]),
        (None, [{"cesql": "type = 5"}], ["#"]),
        (None, [{"cesql": "type LIKE 'a.%'"}], ["a.#"]),
        (None, [{"cesql": "type LIKE 'a.b'"}], ["a.b"]),
        (None, [{"cesql": r"type LIKE 'a\_b'"}], ["a_b"]),
        (None, [{"cesql": "type LIKE 'a_%'"}], ["#"]),
        (None, [{"cesql": "type LIKE 'a.%' AND EXISTS subject"}], ["a.#"]),
        (None, [{"cesql": "type = 'a' OR type = 'b'"}], ["a", "b"]),
        (None, [{"cesql": "type = 'a' OR source = 'b'"}], ["#"]),
        (None, [{"cesql": "type IN ('a', 'b.c')"}], ["a", "b.c"]),
        (None, [{"cesql": "type IN ('a', 1)"}], ["#"]),
        (None, [{"cesql": "type NOT IN ('a')"}], ["#"]),
        (None, [{"cesql": "NOT type = 'a'"}], ["#"]),
        (None, [{"cesql": "type != 'a'"}], ["#"]),
        (None, [{"cesql": "type NOT LIKE 'a.%'"}], ["#"]),
    ],
)
def test_binding_keys(attrs: dict[str, str] | None, filters: Any, expected: list[str]) -> None:
    assert binding_keys(attrs, filters) == expected


def test_binding_keys_validate_like_the_filter() -> None:
    with pytest.raises(FilterError) as info:
        binding_keys(None, [{"exact": {"type": "a"}, "suffix": {"type": "b"}}])
    assert info.value.path == "spec.filters[0]"
    with pytest.raises(FilterError):
        binding_keys({"Type": "a"}, None)


# -- property: bindings never lose an accepted event ---------------------------------------------

WORDS = ["com", "example", "a", "b", "", "*", "#", "a*b", "é", "x" * 60, "y" * 130]


def _type_strategy() -> st.SearchStrategy[str]:
    words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7)
    return words.map(lambda w: ".".join(w) or "a")


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str] | None, list[Any]]:
    event_type = draw(_type_strategy())
    event: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": event_type}
    if draw(st.booleans()):
        event["subject"] = draw(st.sampled_from(["s", "a.b"]))

    dots = [i + 1 for i, c in enumerate(event_type) if c == "."]

    def near_type() -> str:
        """Mostly the event's own type or a prefix of it (so filters match), else random."""
        how = draw(st.sampled_from(["same", "same", "dot", "dot", "cut", "other"]))
        if how == "same":
            text = event_type
        elif how == "dot" and dots:
            text = event_type[: draw(st.sampled_from(dots))]
        elif how == "cut":
            text = event_type[: draw(st.integers(min_value=1, max_value=len(event_type)))]
        else:
            text = draw(_type_strategy())
        return text or "a"

    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    def leaf() -> Any:
        kind = draw(
            st.sampled_from(
                [
                    "exact",
                    "prefix",
                    "suffix",
                    "exact_src",
                    "cesql_eq",
                    "cesql_like",
                    "cesql_in",
                    "cesql_not",
                    "cesql_exists",
                ]
            )
        )
        if kind == "exact":
            return {"exact": {"type": near_type()}}
        if kind == "prefix":
            return {"prefix": {"type": near_type()}}
        if kind == "suffix":
            return {"suffix": {"type": near_type()}}
        if kind == "exact_src":
            return {"exact": {"source": draw(st.sampled_from(["/s", "/t"]))}}
        if kind == "cesql_eq":
            return {"cesql": f"type = {quoted(near_type())}"}
        if kind == "cesql_like":
            pattern = near_type().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return {"cesql": f"type LIKE {quoted(pattern + draw(st.sampled_from(['%', ''])))}"}
        if kind == "cesql_in":
            return {"cesql": f"type IN ({quoted(near_type())}, {quoted(near_type())})"}
        if kind == "cesql_not":
            return {"cesql": f"NOT type = {quoted(near_type())}"}
        return {"cesql": "EXISTS subject"}

    def node(depth: int) -> Any:
        if depth >= 3 or draw(st.booleans()):
            return leaf()
        kind = draw(st.sampled_from(["all", "any", "not"]))
        if kind == "not":
            return {"not": node(depth + 1)}
        return {kind: [node(depth + 1) for _ in range(draw(st.integers(0, 3)))]}

    filters = [node(0) for _ in range(draw(st.integers(0, 3)))]
    attrs = draw(st.sampled_from([None, {}, {"type": near_type()}, {"type": ""}]))
    return event, attrs, filters


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenario())
def test_bindings_are_a_superset_of_what_the_filter_accepts(
    scenario: tuple[dict[str, Any], dict[str, str] | None, list[Any]],
) -> None:
    event, attrs, filters = scenario
    keys = binding_keys(attrs, filters)
    assert keys and keys == sorted(set(keys))
    for key in keys:
        assert len(key.encode("utf-8")) <= 255
    if compile_trigger_filter(attrs, filters).matches(event):
        routing_key = routing_key_for_type(event["type"])
        assert any(topic_matches(key, routing_key) for key in keys), (keys, routing_key)
