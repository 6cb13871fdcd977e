"""What every compiled filter offers, and the filter that accepts everything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EventFilter(Protocol):
    """A compiled Trigger filter. `attributes` holds every context attribute and extension."""

    def matches(self, attributes: Mapping[str, Any]) -> bool: ...


class MatchAll:
    """No filter at all: every event passes."""

    __slots__ = ()

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return True

    def __repr__(self) -> str:
        return "MatchAll()"


MATCH_ALL = MatchAll()
