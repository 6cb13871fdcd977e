"""RabbitMQ topic-exchange binding keys for a Trigger, and the routing key of an event.

Events are published to the broker's topic exchange with their `type` as routing key
(`routing_key_for_type`). Each Trigger queue is bound with `binding_keys(...)`: the union
of those keys must accept *every* event the Trigger's filter accepts (a superset: the
dispatcher still applies the full filter to whatever arrives), and should be as narrow as
possible so that RabbitMQ drops unwanted events before they reach the queue.

Topic semantics: keys are words separated by '.', a binding word `*` matches exactly one
word, `#` zero or more; any other word (including one merely containing `*` or `#`, and the
empty word) matches itself literally.

Reasoning behind each rule:

* Routing keys are AMQP short strings, at most 255 bytes. A longer type is cut after its
  last '.' within the first 255 bytes (whole words only, the dot kept; "" without any dot),
  so a routing key always starts with whole leading words of its type.
* Exact type T (from `filter.attributes` with a non-empty value, an `exact` dialect, or a
  CESQL `type = 'T'`/`type LIKE 'T'`/`type IN (...)`) -> key T. Not possible, so `#`, when T
  has a word that is exactly `*` or `#` (no escaping exists in AMQP) or when T is longer
  than 255 bytes (its routing key is the truncation, not T).
* Type prefix P ending with '.' (a `prefix` dialect or CESQL `type LIKE 'P%'`) -> `P#`,
  e.g. `com.example.#`: every type starting with P has P's words first, and a truncated
  long type still keeps all of P's words (`#` also matches zero words, covering a cut right
  at P's last dot). Prefixes not ending at a dot -> `#` (a word may continue past them);
  prefixes over 200 bytes -> `#`, keeping keys well within the 255-byte limit.
* In an AND (the top-level list, `all`, CESQL AND) any one narrowing conjunct bounds the
  whole, so the narrowest wins: exact keys beat prefix keys, then fewer keys.
* `any` (CESQL OR, IN) narrows only when every branch narrows: the union of their keys.
* `not`, `suffix`, other attributes and other CESQL narrow nothing -> `#`.
* Empty `all`/`any` are neutral, exactly as the filter treats them (see dialects.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from rabbitmesh.cesql import compile_expression
from rabbitmesh.cesql.like import literal_shape
from rabbitmesh.cesql.parser import Binary, Identifier, In, Like, Literal, Node
from rabbitmesh.filters.dialects import compile_trigger_filter, dialect_of, uses_filters

MAX_ROUTING_KEY_BYTES: Final = 255
MAX_PREFIX_BYTES: Final = 200
MATCH_EVERYTHING: Final = "#"

Keys = frozenset[str]
#: Marker for a neutral filter (empty all/any), which constrains nothing and is dropped.
_NEUTRAL: Final = frozenset({"\0neutral"})


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def routing_key_for_type(type_: str) -> str:
    """The routing key events of type `type_` are published with (at most 255 bytes)."""
    raw = _utf8(type_)
    if len(raw) <= MAX_ROUTING_KEY_BYTES:
        return type_
    cut = raw.rfind(b".", 0, MAX_ROUTING_KEY_BYTES)
    return "" if cut < 0 else raw[: cut + 1].decode("utf-8", "surrogatepass")


def binding_keys(
    filter_attributes: Mapping[str, str] | None, filters: list[dict[str, Any]] | None
) -> list[str]:
    """Sorted binding keys whose union accepts every event the Trigger's filter accepts.

    Validates like `compile_trigger_filter` (same FilterError for invalid filters).
    """
    compile_trigger_filter(filter_attributes, filters)
    keys: Keys | None
    if uses_filters(filters):
        keys = _all(filters or [])
    else:
        type_ = (filter_attributes or {}).get("type")
        keys = _exact(type_) if type_ else None
    if keys is None or keys is _NEUTRAL:
        return [MATCH_EVERYTHING]
    return sorted(keys)


# -- leaves ----------------------------------------------------------------------------------


def _bindable(words: Iterable[str]) -> bool:
    return not any(word in ("*", "#") for word in words)


def _exact(type_: str) -> Keys | None:
    if len(_utf8(type_)) > MAX_ROUTING_KEY_BYTES or not _bindable(type_.split(".")):
        return None
    return frozenset({type_})


def _prefix(prefix: str) -> Keys | None:
    if not prefix.endswith(".") or len(_utf8(prefix)) > MAX_PREFIX_BYTES:
        return None
    if not _bindable(prefix[:-1].split(".")):
        return None
    return frozenset({prefix + MATCH_EVERYTHING})


# -- combinators -----------------------------------------------------------------------------


def _cost(keys: Keys) -> tuple[int, int, int]:
    """Lower is narrower: fewer wildcard keys, then fewer keys, then longer literal text."""
    wildcards = sum(1 for key in keys if key.endswith(MATCH_EVERYTHING))
    return (wildcards, len(keys), -sum(len(key) for key in keys))


def _conjunction(parts: list[Keys | None]) -> Keys | None:
    present = [p for p in parts if p is not _NEUTRAL]
    if not present:
        return _NEUTRAL
    narrowing = [p for p in present if p is not None]
    return min(narrowing, key=_cost) if narrowing else None


def _disjunction(parts: list[Keys | None]) -> Keys | None:
    present = [p for p in parts if p is not _NEUTRAL]
    if not present:
        return _NEUTRAL
    if any(p is None for p in present):
        return None
    return frozenset().union(*(p for p in present if p is not None))


# -- Subscriptions API dialects ----------------------------------------------------------------


def _all(filters: Iterable[Any]) -> Keys | None:
    return _conjunction([_one(item) for item in filters])


def _one(item: Any) -> Keys | None:
    dialect, value = dialect_of(item, "")
    if dialect == "exact":
        return _exact(value["type"]) if "type" in value else None
    if dialect == "prefix":
        return _prefix(value["type"]) if "type" in value else None
    if dialect == "all":
        return _all(value)
    if dialect == "any":
        return _disjunction([_one(child) for child in value])
    if dialect == "not":
        return _NEUTRAL if _one(value) is _NEUTRAL else None
    if dialect == "cesql":
        return _cesql(compile_expression(value).ast)
    return None  # suffix


# -- CESQL -----------------------------------------------------------------------------------


def _is_type(node: Node) -> bool:
    return isinstance(node, Identifier) and node.name == "type"


def _string_literal(node: Node) -> str | None:
    if isinstance(node, Literal) and isinstance(node.value, str):
        return node.value
    return None


def _cesql(node: Node) -> Keys | None:
    """Keys implied by a CESQL expression that evaluated to true without errors."""
    if isinstance(node, Binary):
        if node.op == "AND":
            return _conjunction([_cesql(node.left), _cesql(node.right)])
        if node.op == "OR":
            return _disjunction([_cesql(node.left), _cesql(node.right)])
        if node.op == "=":
            # Either order compares as strings: `type` is a String attribute.
            if _is_type(node.left) and (text := _string_literal(node.right)) is not None:
                return _exact(text)
            if _is_type(node.right) and (text := _string_literal(node.left)) is not None:
                return _exact(text)
        return None
    if isinstance(node, Like) and not node.negate and _is_type(node.operand):
        shape = literal_shape(node.pattern)
        if shape is None:
            return None
        kind, text = shape
        return _exact(text) if kind == "exact" else _prefix(text)
    if isinstance(node, In) and not node.negate and _is_type(node.operand):
        texts = [_string_literal(item) for item in node.items]
        if any(text is None for text in texts):
            return None
        return _disjunction([_exact(text) for text in texts if text is not None])
    return None
