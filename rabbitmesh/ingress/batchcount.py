"""Counting a batch's events while its body arrives, so an over-long batch is refused after
its first `max_events` + 1 items instead of after all of its (up to RABBITMESH_MAX_EVENT_BYTES)
bytes were received.

The counter only finds where to stop: the prefix it returns (every byte up to a separator
after item `max_events` + 1) is then decoded as before (rabbitmesh/cloudevents/jsonformat.py
`batch_items`), which refuses it exactly as it would the whole body (413 at item
`max_events` + 1, or 400 for a broken item before it). Anything the counter cannot follow
cheaply (a body that is not an array, deep or bracket-heavy items, unbalanced brackets)
turns it off, and the body is read whole as before.
"""

from __future__ import annotations

import re

#: A complete JSON string (escapes included); an unterminated one is carried to the next chunk.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_INNERMOST = re.compile(rb"[\[{][^\[\]{}]*[\]}]")
#: Every byte but the structure that decides an item's end: translate() deletes these.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{},")
_JSON_WHITESPACE = b" \t\r\n"
#: Brackets (outside strings) the counter looks at per allowed event before it gives up:
#: its cost stays a few milliseconds of the loop whatever the body.
BRACKETS_PER_EVENT = 16
#: Bytes gathered before they are scanned.
SCAN_BYTES = 8 * 1024
#: A string longer than this, still open across blocks, turns the counter off (the decoder
#: judges the body).
MAX_PENDING_BYTES = 1024 * 1024


class BatchTooLong(Exception):
    """More than `max_events` items: `prefix` ends just after a separator that follows item
    `max_events` + 1 (so it is valid UTF-8 and holds that item whole)."""

    def __init__(self, prefix: bytes) -> None:
        super().__init__("batch too long")
        self.prefix = prefix


class BatchCounter:
    """Fed the body's chunks in order (`feed`); raises BatchTooLong once the top-level array
    has more than `max_events` items. Chunks are looked at SCAN_BYTES at a time, so a body
    that arrives in small pieces costs no more than one that arrives in large ones."""

    __slots__ = (
        "_budget",
        "_chunks",
        "_deepest",
        "_commas",
        "_depth",
        "_fed",
        "_off",
        "_pending",
        "_unscanned",
        "_unscanned_size",
        "max_events",
        "stopped",
    )

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._chunks: list[bytes] = []  # everything fed, for the prefix
        self._fed = 0
        self._unscanned: list[bytes] = []
        self._unscanned_size = 0
        self._pending = b""  # the unterminated string at the end of what was scanned
        self._depth = 0  # nesting outside strings; 1 inside the batch's array
        self._commas = 0  # separators between the array's items seen so far
        self._budget = BRACKETS_PER_EVENT * (max_events + 1)
        self._deepest = 0  # the deepest `_depth` seen between the innermost groups
        self._off = False
        #: True once it raised BatchTooLong: the body given to the decoder is a prefix.
        self.stopped = False

    @property
    def max_nesting(self) -> int:
        """At least as deep as arrays and objects nest in what was scanned, the batch's array
        counted as level 1 (innermost groups were skipped: they add one level at most)."""
        return self._deepest + 1

    def feed(self, chunk: bytes) -> None:
        if self._off or not chunk:
            return
        self._chunks.append(chunk)
        self._fed += len(chunk)
        self._unscanned.append(chunk)
        self._unscanned_size += len(chunk)
        if self._unscanned_size < SCAN_BYTES:
            return
        block = b"".join(self._unscanned) if len(self._unscanned) > 1 else chunk
        self._unscanned.clear()
        self._unscanned_size = 0
        self._scan(block)

    def _scan(self, block: bytes) -> None:
        data = self._pending + block if self._pending else block
        if self._depth == 0:  # the array has not begun: only whitespace may come first
            start = len(data) - len(data.lstrip(_JSON_WHITESPACE))
            if start == len(data):
                return
            if data[start] != 0x5B:  # "[": not a batch; the decoder says what it is
                self._off = True
                return
            self._depth = self._deepest = 1
            data = data[start + 1 :]
        outside = _outside_strings(data)
        if outside is None:
            self._off = True
            return
        stripped, self._pending = outside
        # Innermost groups ({...} or [...] without brackets inside, in one C pass) end where
        # they began, one level deeper than the array at least: dropping them loses no
        # separator of the array's, and leaves few brackets for the loop below.
        structure = _INNERMOST.sub(b"", stripped.translate(None, _NOT_STRUCTURE))
        depth, commas, pos = self._depth, 0, 0
        for found in _BRACKET.finditer(structure):
            if depth == 1:
                commas += structure.count(b",", pos, found.start())
            if structure[found.start()] in b"[{":
                depth += 1
                self._deepest = max(self._deepest, depth)
            else:
                depth -= 1
            pos = found.end()
            self._budget -= 1
            if depth <= 0 or self._budget < 0:
                # The array ended (or the body is no JSON), or its items are too bracket-
                # heavy to follow cheaply: count what was seen, then leave it to the decoder.
                self._off = True
                break
        else:
            if depth == 1:
                commas += structure.count(b",", pos)
        self._depth = depth
        self._commas += commas
        if self._commas >= self.max_events + 1:  # item max_events + 2 has begun
            # The separator that made the count is in this block, at or before its last
            # comma (a comma never splits a UTF-8 sequence).
            end = self._fed - len(block) + block.rfind(b",") + 1
            self.stopped = True
            raise BatchTooLong(b"".join(self._chunks)[:end])


def _outside_strings(data: bytes) -> tuple[bytes, bytes] | None:
    """What of `data` (which begins outside a string) is outside JSON strings, and the
    unterminated string it ends in (b"" when none); None when that string is too long to
    carry."""
    if b"\\" not in data:  # no escapes: every quote opens or closes a string (C speed)
        parts = data.split(b'"')
        pending = b'"' + parts[-1] if len(parts) % 2 == 0 else b""
        stripped = b"".join(parts[0::2])
    else:
        stripped = _STRING.sub(b"", data)
        # A quote left over starts a string that does not end in `data` (each string before
        # it was removed): it and everything after it wait for the next block.
        cut = stripped.find(b'"')
        pending = stripped[cut:] if cut >= 0 else b""
        stripped = stripped[:cut] if cut >= 0 else stripped
    if len(pending) > MAX_PENDING_BYTES:
        return None
    return stripped, pending
