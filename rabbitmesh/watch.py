"""The change feed behind the admin API's `?watch=true`, as Kubernetes' watch has it.

After each reconcile batch the control plane records, for every resource whose rendered
object (spec and status) changed, one event `{"type": "ADDED|MODIFIED|DELETED", "object":
...}` tagged with the resource store offset the batch had read up to: its resourceVersion.
A watch from resourceVersion N gets every event tagged above N, then the live ones. The
last HISTORY events are kept (as JSON lines, one small object each); a watch from before
them gets 410 Gone, and the client lists again, as with Kubernetes.

Several events may share a resourceVersion (a write, and the status changes of its
dependents in the same batch); a status-only change of a later batch with no new store
record carries the same resourceVersion as the write before it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from rabbitmesh.store.state import Key

HISTORY = 10_000
#: Events a watcher may have unread before it is cut off (it resumes from its last version).
WATCHER_BACKLOG = 10_000

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class Event:
    version: int
    kind: str
    namespace: str
    line: bytes  # {"type": ..., "object": ...} and a newline


class Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(WATCHER_BACKLOG)
        self.overflowed = False

    def put(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue = asyncio.Queue(1)
            self.queue.put_nowait(None)  # the reader ends the stream


class WatchLog:
    def __init__(self, history: int = HISTORY) -> None:
        self._events: deque[Event] = deque(maxlen=history)
        #: The newest version no longer kept (a watch from before it cannot resume).
        self.expired = -1
        #: key -> digest of the object last sent, to skip resyncs that changed nothing.
        self._digests: dict[Key, bytes] = {}
        #: key -> what a DELETED event shows: the object's identity (Kubernetes sends the last
        #: state; keeping every whole object would cost memory for little use).
        self._last_object: dict[Key, dict[str, Any]] = {}
        self._watchers: set[Watcher] = set()

    def record(self, version: int, key: Key, obj: dict[str, Any] | None) -> None:
        """`obj` is the rendered resource now, None once it is gone."""
        if obj is None:
            if self._digests.pop(key, None) is None:
                return
            last = self._last_object.pop(key, None)
            self._append(version, key, "DELETED", last or {"kind": key[0]})
            return
        body = orjson.dumps(obj)
        digest = hashlib.blake2b(body, digest_size=8).digest()
        before = self._digests.get(key)
        if before == digest:
            return
        self._digests[key] = digest
        self._last_object[key] = _identity(obj)
        self._append(version, key, "ADDED" if before is None else "MODIFIED", obj)

    def _append(self, version: int, key: Key, type_: EventType, obj: dict[str, Any]) -> None:
        line = orjson.dumps({"type": type_, "object": obj}) + b"\n"
        event = Event(version, key[0], key[1], line)
        if len(self._events) == self._events.maxlen:
            self.expired = max(self.expired, self._events[0].version)
        self._events.append(event)
        for watcher in list(self._watchers):
            watcher.put(event)

    def since(self, version: int) -> Iterator[Event]:
        """Kept events newer than `version`; raise Expired when some were dropped."""
        if version < self.expired:
            raise Expired(version, self.expired)
        return (e for e in list(self._events) if e.version > version)

    def subscribe(self) -> Watcher:
        w = Watcher()
        self._watchers.add(w)
        return w

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    @property
    def watching(self) -> int:
        """Open watch streams."""
        return len(self._watchers)


def _identity(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": keep}


class Expired(Exception):
    def __init__(self, asked: int, expired: int) -> None:
        super().__init__(
            f"resourceVersion {asked} is too old (events up to {expired} are no longer kept): "
            "list again and watch from the list's resourceVersion"
        )
