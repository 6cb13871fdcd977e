"""The store's state machine: records in stream order -> the set of stored resources.

Pure and deterministic: every replica applies the same records in the same order (the
stream's), so every replica ends with the same entries, versions and outcomes. That is what
makes preconditions (create-if-absent, replace-if-version) and cascading deletes safe across
replicas without a lock: the stream is the lock.

Records (JSON):
- `apply`: `key`, `manifest` (validated, no status, no server fields), `origin`
  (`file`, `api` or `auto`), `source` (file name for `file`), `uid`, optional `expect`;
- `delete`: `key`, optional `expect`; entries owned by the deleted one go with it;
- `snapshot`: `entries` (the whole state) and `base` (the offset it was taken at);
- `hello`: nothing; a replica reads its own hello back to know it has caught up.
`expect` is `"absent"` (create), `"present"` (replace) or a resourceVersion (compare-and-swap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" for cluster-scoped kinds

#: How many earlier specs an entry remembers (so a fresh replica can undo what they bound).
HISTORY = 5

Result = Literal["created", "configured", "unchanged", "deleted", "conflict", "notfound", "noop"]


def spec_part(manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything but apiVersion, kind, metadata and status: what `generation` counts."""
    return {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}


@dataclass
class Entry:
    kind: str
    namespace: str
    name: str
    manifest: dict[str, Any]
    origin: str
    source: str
    uid: str
    generation: int
    resource_version: int  # the stream offset of the record that last changed it
    created: str  # RFC 3339, the time of the record that created it
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.kind, self.namespace, self.name)

    def owners(self) -> list[Key]:
        refs = (self.manifest.get("metadata") or {}).get("ownerReferences") or []
        return [
            (r.get("kind", ""), self.namespace if r.get("kind") != "Namespace" else "", r["name"])
            for r in refs
            if isinstance(r, dict) and r.get("name")
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})  # newer writers may add fields


@dataclass
class Outcome:
    result: Result
    message: str = ""
    entry: Entry | None = None
    offset: int = -1

    @property
    def ok(self) -> bool:
        return self.result not in ("conflict", "notfound")


def describe(key: Key) -> str:
    kind, ns, name = key
    return f"{kind} {ns + '/' if ns else ''}{name}"


@dataclass
class StoreState:
    entries: dict[Key, Entry] = field(default_factory=dict)
    last_offset: int = -1
    #: False while reading a stream whose head was dropped by retention, until a snapshot.
    based: bool = True
    records_since_snapshot: int = 0
    bytes_since_snapshot: int = 0
    #: Bumped on every change, so watchers can tell whether anything changed.
    version: int = 0
    #: The first offset read: above 0 when retention had dropped the head of the stream.
    first_offset: int = -1
    #: Keys changed since the reader last took them (the control plane reconciles those).
    changed: set[Key] = field(default_factory=set)
    _unbased: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    #: owner -> the keys whose ownerReferences name it: a delete's cascade looks up what it
    #: owned instead of reading every entry's references (O(resources) per delete).
    _owned: dict[Key, set[Key]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for entry in self.entries.values():
            self._index(entry)

    def _index(self, entry: Entry) -> None:
        for owner in entry.owners():
            self._owned.setdefault(owner, set()).add(entry.key)

    def _unindex(self, entry: Entry) -> None:
        for owner in entry.owners():
            owned = self._owned.get(owner)
            if owned is not None:
                owned.discard(entry.key)
                if not owned:
                    del self._owned[owner]

    def _put(self, entry: Entry) -> None:
        old = self.entries.get(entry.key)
        if old is not None:
            self._unindex(old)
        self.entries[entry.key] = entry
        self._index(entry)

    def _pop(self, key: Key) -> Entry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._unindex(entry)
        return entry

    def apply(self, offset: int, record: dict[str, Any], size: int = 0) -> Outcome | None:
        """Apply the record at `offset`; None for an offset already applied (a re-read)."""
        if offset <= self.last_offset:
            return None
        if self.first_offset < 0:
            self.first_offset = offset
        if self.last_offset < 0 and offset > 0:
            # Retention dropped the head of the stream: what we read is only complete from
            # the first snapshot on (docs/control-plane.md, "Retention").
            self.based = False
        self.last_offset = offset
        op = record.get("op")
        if op == "snapshot":
            self.records_since_snapshot = 0
            self.bytes_since_snapshot = 0
            if not self.based:
                self._load_snapshot(record)
                return Outcome("noop", offset=offset)
            return Outcome("noop", offset=offset)
        self.records_since_snapshot += 1
        self.bytes_since_snapshot += size
        if not self.based:
            self._unbased.append((offset, record))
        return self._apply_op(offset, record)

    def _load_snapshot(self, record: dict[str, Any]) -> None:
        base = int(record.get("base", -1))
        self.changed.update(self.entries)
        self.entries, self._owned = {}, {}
        for d in record.get("entries", []):
            self._put(Entry.from_dict(d))
        replay, self._unbased = [(o, r) for o, r in self._unbased if o > base], []
        for offset, rec in replay:
            self._apply_op(offset, rec)
        self.based = True
        self.changed.update(self.entries)
        self.version += 1

    def _apply_op(self, offset: int, record: dict[str, Any]) -> Outcome:
        op = record.get("op")
        if op == "apply":
            return self._apply(offset, record)
        if op == "delete":
            return self._delete(offset, record)
        return Outcome("noop", offset=offset)

    def _check(self, key: Key, expect: Any) -> Outcome | None:
        cur = self.entries.get(key)
        if expect == "absent" and cur is not None:
            return Outcome("conflict", f"{describe(key)} already exists", cur)
        if expect is not None and expect != "absent" and cur is None:
            return Outcome("notfound", f"{describe(key)} not found")
        if isinstance(expect, int) and cur is not None and cur.resource_version != expect:
            return Outcome(
                "conflict",
                f"{describe(key)} was changed (resourceVersion {cur.resource_version}, not "
                f"{expect}): read it again and retry",
                cur,
            )
        return None

    def _apply(self, offset: int, rec: dict[str, Any]) -> Outcome:
        key: Key = tuple(rec["key"])
        refused = self._check(key, rec.get("expect"))
        if refused is not None:
            refused.offset = offset
            return refused
        cur = self.entries.get(key)
        manifest = rec["manifest"]
        origin, source = rec.get("origin", "api"), rec.get("source", "")
        if cur is not None and cur.origin == "file" and origin != "file":
            # A file owns what it defines: an API edit changes it until the file changes
            # again, and removing the document still deletes it.
            origin, source = cur.origin, cur.source
        if cur is None:
            entry = Entry(
                kind=key[0],
                namespace=key[1],
                name=key[2],
                manifest=manifest,
                origin=origin,
                source=source,
                uid=rec.get("uid") or f"{offset}",
                generation=1,
                resource_version=offset,
                created=rec.get("time", ""),
            )
            self._put(entry)
            self.changed.add(key)
            self.version += 1
            return Outcome("created", entry=entry, offset=offset)
        if cur.manifest == manifest and cur.origin == origin and cur.source == source:
            return Outcome("unchanged", entry=cur, offset=offset)
        spec_changed = spec_part(cur.manifest) != spec_part(manifest)
        entry = Entry(
            kind=cur.kind,
            namespace=cur.namespace,
            name=cur.name,
            manifest=manifest,
            origin=origin,
            source=source,
            uid=cur.uid,
            generation=cur.generation + (1 if spec_changed else 0),
            resource_version=offset,
            created=cur.created,
            history=(cur.history + [spec_part(cur.manifest)])[-HISTORY:]
            if spec_changed
            else cur.history,
        )
        self._put(entry)
        self.changed.add(key)
        self.version += 1
        return Outcome("configured", entry=entry, offset=offset)

    def _delete(self, offset: int, rec: dict[str, Any]) -> Outcome:
        key: Key = tuple(rec["key"])
        refused = self._check(key, rec.get("expect", "present"))
        if refused is not None:
            refused.offset = offset
            return refused
        entry = self._pop(key)
        assert entry is not None  # _check found it
        self.changed.add(key)
        self._cascade(key)
        self.version += 1
        return Outcome("deleted", entry=entry, offset=offset)

    def _cascade(self, owner: Key) -> None:
        """Delete what the deleted resource owned (ownerReferences), as Kubernetes' GC does."""
        for key in sorted(self._owned.get(owner, ())):  # sorted: the same order everywhere
            if self._pop(key) is not None:
                self.changed.add(key)
                self._cascade(key)

    def snapshot_record(self) -> dict[str, Any]:
        """The state as a `snapshot` record, to encode with orjson at once (before the state
        changes): its entries are the Entry objects themselves, which orjson writes as the
        JSON objects `Entry.to_dict` makes, without that deep copy of every manifest first
        (~8 MiB of dicts at 5,000 Triggers, freed again: RSS that stayed; issue 13)."""
        return {"op": "snapshot", "base": self.last_offset, "entries": list(self.entries.values())}

    def file_entries(self) -> Iterable[Entry]:
        return (e for e in self.entries.values() if e.origin == "file")
