"""Knative's `spec.filter.attributes`: exact matches on attribute values.

Every key must be present with exactly that value, compared as strings (true/false for
booleans, decimal for integers); the value "" only asks for a present, non-empty attribute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from rabbitmesh.cesql.casting import attribute_string
from rabbitmesh.filters.errors import FilterError, child_path

ATTRIBUTE_NAME: Final = re.compile(r"[a-z][a-z0-9]*")
NAME_RULE: Final = "attribute names are lowercase letters and digits, starting with a letter"


def check_attribute_name(name: object, path: str) -> str:
    """`name` if it is a valid CloudEvents attribute name, else FilterError at `path`."""
    if not isinstance(name, str) or ATTRIBUTE_NAME.fullmatch(name) is None:
        raise FilterError(path, f"invalid attribute name {name!r}: {NAME_RULE}")
    return name


def describe_type(value: object) -> str:
    """A YAML-ish type name for error messages."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


class AttributesFilter:
    """`spec.filter.attributes`; an empty mapping matches every event."""

    __slots__ = ("attributes", "_equal", "_present")

    def __init__(self, attrs: Mapping[str, str], path: str = "spec.filter.attributes") -> None:
        if not isinstance(attrs, Mapping):
            raise FilterError(
                path,
                f"expected an object mapping attribute names to strings, got "
                f"{describe_type(attrs)}",
            )
        for name, value in attrs.items():
            check_attribute_name(name, child_path(path, name))
            if not isinstance(value, str):
                raise FilterError(
                    child_path(path, name), f"expected a string value, got {describe_type(value)}"
                )
        self.attributes: dict[str, str] = dict(attrs)
        self._equal = tuple((k, v) for k, v in attrs.items() if v != "")
        self._present = tuple(k for k, v in attrs.items() if v == "")

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        get = attributes.get
        for name, expected in self._equal:
            value = get(name)
            if value is None:
                return False
            if value.__class__ is not str:
                value = attribute_string(value)
            if value != expected:
                return False
        for name in self._present:
            value = get(name)
            if value is None or value == "" or attribute_string(value) == "":
                return False
        return True

    def __repr__(self) -> str:
        return f"AttributesFilter({self.attributes!r})"
