"""LIKE patterns compiled once into a plain `str -> bool` matcher (spec section 3.4.3).

`%` is any run of characters, `_` exactly one character, `\\%` and `\\_` are the literal
characters; a backslash before anything else is a literal backslash (the spec only defines
escapes for `%` and `_`). Matching is case-sensitive and covers the whole value.

Common shapes skip the regex engine: no wildcard is string equality, `abc%` is startswith,
`%abc` endswith, `%abc%` a substring test. Other patterns are split at their `%`s into
fixed-length segments (literal text and `_`), each a small DOTALL regex (so `_` and `%`
also match newlines): the first must match at the start, the last at the end, and each one
between is searched for leftmost, after the previous. Leftmost is always right for
fixed-length segments, so nothing backtracks across a `%` and a match costs at most
O(len(value) * len(pattern)); one regex such as `.*a.*a.*a.*b` would cost
O(len(value) ** 4) on a long attribute value (seconds for a few hundred characters).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import methodcaller
from typing import Final

Matcher = Callable[[str], bool]

_ANY: Final = object()  # "%"
_ONE: Final = object()  # "_"


def _parts(pattern: str) -> list[str | object]:
    """Split a pattern into literal runs and wildcard markers (consecutive %s collapsed)."""
    parts: list[str | object] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            parts.append("".join(literal))
            literal.clear()

    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n and pattern[i + 1] in "%_":
            literal.append(pattern[i + 1])
            i += 2
            continue
        if c == "%":
            flush()
            if not parts or parts[-1] is not _ANY:
                parts.append(_ANY)
        elif c == "_":
            flush()
            parts.append(_ONE)
        else:
            literal.append(c)
        i += 1
    flush()
    return parts


def compile_like(pattern: str) -> Matcher:
    """A matcher deciding whether a whole string matches the LIKE `pattern`."""
    parts = _parts(pattern)
    if not parts:
        return methodcaller("__eq__", "")
    if parts == [_ANY]:
        return _always
    if len(parts) == 1 and isinstance(parts[0], str):
        return methodcaller("__eq__", parts[0])
    if len(parts) == 2 and isinstance(parts[0], str) and parts[1] is _ANY:
        return methodcaller("startswith", parts[0])
    if len(parts) == 2 and parts[0] is _ANY and isinstance(parts[1], str):
        return methodcaller("endswith", parts[1])
    if len(parts) == 3 and parts[0] is _ANY and parts[2] is _ANY and isinstance(parts[1], str):
        needle = parts[1]
        return lambda value: needle in value
    if _ANY not in parts:  # fixed length: one regex without `.*` cannot backtrack far
        fullmatch = _segment_regex(parts).fullmatch
        return lambda value: fullmatch(value) is not None
    return _segmented(parts)


def _segmented(parts: list[str | object]) -> Matcher:
    """A matcher for a pattern with at least one `%`, without backtracking across them."""
    segments: list[list[str | object]] = [[]]
    for part in parts:
        if part is _ANY:
            segments.append([])
        else:
            segments[-1].append(part)
    first, *middle, last = segments
    head = _segment_regex(first).match if first else None
    head_size = _segment_size(first)
    tail = _segment_regex(last).fullmatch if last else None
    tail_size = _segment_size(last)
    searches = tuple(_segment_regex(segment).search for segment in middle if segment)
    least = head_size + tail_size + sum(_segment_size(segment) for segment in middle)

    def matches(value: str) -> bool:
        size = len(value)
        if size < least:
            return False
        if head is not None and head(value) is None:
            return False
        end = size - tail_size
        if tail is not None and tail(value, end) is None:
            return False
        pos = head_size
        for search in searches:
            found = search(value, pos, end)
            if found is None:
                return False
            pos = found.end()
        return True

    return matches


def _segment_size(segment: list[str | object]) -> int:
    return sum(len(part) if isinstance(part, str) else 1 for part in segment)  # else: _ONE


def _segment_regex(segment: list[str | object]) -> re.Pattern[str]:
    return re.compile("".join(_regex_piece(part) for part in segment), re.DOTALL)


def _regex_piece(part: str | object) -> str:
    if part is _ANY:
        return ".*"
    if part is _ONE:
        return "."
    return re.escape(str(part))


def _always(value: str) -> bool:
    return True


def literal_shape(pattern: str) -> tuple[str, str] | None:
    """("exact", text) for a wildcard-free pattern, ("prefix", text) for `text%`, else None.

    Lets callers reason about what a pattern accepts (e.g. RabbitMQ binding keys).
    """
    parts = _parts(pattern)
    if not parts:
        return ("exact", "")
    if len(parts) == 1 and isinstance(parts[0], str):
        return ("exact", parts[0])
    if len(parts) == 2 and isinstance(parts[0], str) and parts[1] is _ANY:
        return ("prefix", parts[0])
    if parts == [_ANY]:
        return ("prefix", "")
    return None
