"""The resource store's state machine: deterministic outcomes from records in stream order."""

from __future__ import annotations

import orjson

from rabbitmesh.store.state import HISTORY, StoreState


def broker(name: str = "br", **spec: object) -> dict:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name, "namespace": "default"},
        "spec": dict(spec),
    }


def put(key, manifest, origin="api", expect=None, source="", **extra) -> dict:
    return {
        "op": "apply",
        "key": list(key),
        "manifest": manifest,
        "origin": origin,
        "source": source,
        "uid": "u-" + key[2],
        "expect": expect,
        "time": "2026-01-01T00:00:00Z",
        **extra,
    }


BR = ("Broker", "default", "br")


def as_read(record: dict) -> dict:
    """A record as a replica reads it from the stream (written as JSON)."""
    return orjson.loads(orjson.dumps(record))


def test_create_configure_unchanged_and_versions():
    s = StoreState()
    first = s.apply(0, put(BR, broker()))
    assert first.result == "created" and first.entry.generation == 1
    assert first.entry.resource_version == 0 and first.entry.uid == "u-br"
    same = s.apply(1, put(BR, broker()))
    assert same.result == "unchanged" and same.entry.resource_version == 0
    labelled = broker()
    labelled["metadata"]["labels"] = {"a": "b"}
    meta_only = s.apply(2, put(BR, labelled))
    assert meta_only.result == "configured"
    assert meta_only.entry.generation == 1  # metadata is not spec: no new generation
    spec = s.apply(5, put(BR, broker(delivery={"retry": 1})))
    assert spec.result == "configured" and spec.entry.generation == 2
    assert spec.entry.resource_version == 5 and spec.entry.uid == "u-br"
    assert spec.entry.created == "2026-01-01T00:00:00Z"
    assert spec.entry.history == [{"spec": {}}]


def test_offsets_already_applied_are_skipped():
    s = StoreState()
    s.apply(0, put(BR, broker()))
    version = s.version
    assert s.apply(0, {"op": "delete", "key": list(BR)}) is None
    assert BR in s.entries and s.version == version


def test_preconditions():
    s = StoreState()
    s.apply(0, put(BR, broker()))
    again = s.apply(1, put(BR, broker(x=1), expect="absent"))
    assert again.result == "conflict" and "already exists" in again.message
    assert s.entries[BR].manifest == broker()  # refused: nothing changed
    stale = s.apply(2, put(BR, broker(x=1), expect=99))
    assert stale.result == "conflict" and "resourceVersion" in stale.message
    fresh = s.apply(3, put(BR, broker(x=1), expect=0))
    assert fresh.result == "configured"
    missing = s.apply(4, put(("Broker", "default", "nope"), broker("nope"), expect="present"))
    assert missing.result == "notfound" and not missing.ok
    gone = s.apply(5, {"op": "delete", "key": ["Trigger", "default", "x"]})
    assert gone.result == "notfound"


def test_delete_cascades_to_owned_resources():
    s = StoreState()
    s.apply(0, put(BR, broker()))
    owned = {
        "apiVersion": "eventing.knative.dev/v1beta3",
        "kind": "EventType",
        "metadata": {
            "name": "et",
            "namespace": "default",
            "ownerReferences": [{"kind": "Broker", "name": "br"}],
        },
        "spec": {},
    }
    s.apply(1, put(("EventType", "default", "et"), owned, origin="auto"))
    s.apply(2, put(("Broker", "default", "other"), broker("other")))
    out = s.apply(3, {"op": "delete", "key": list(BR)})
    assert out.result == "deleted"
    assert set(s.entries) == {("Broker", "default", "other")}


def _event_type(name: str, owner: str | None) -> dict:
    meta: dict = {"name": name, "namespace": "default"}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": "Broker", "name": owner}]
    return {"apiVersion": "eventing.knative.dev/v1beta3", "kind": "EventType", "metadata": meta}


def test_the_cascade_follows_owner_references_as_they_are_now():
    """What a delete cascades to is looked up in an index (not by reading every entry): it
    must follow updates that add, move or drop a reference, and a snapshot's entries."""
    s = StoreState()
    s.apply(0, put(BR, broker()))
    s.apply(1, put(("Broker", "default", "b2"), broker("b2")))
    et = lambda n: ("EventType", "default", n)  # noqa: E731
    s.apply(2, put(et("kept"), _event_type("kept", "br")))
    s.apply(3, put(et("moved"), _event_type("moved", "br")))
    s.apply(4, put(et("gone"), _event_type("gone", "br")))
    s.apply(5, put(et("kept"), _event_type("kept", None)))  # the reference dropped
    s.apply(6, put(et("moved"), _event_type("moved", "b2")))  # now owned by b2
    s.apply(7, {"op": "delete", "key": list(BR)})
    assert set(s.entries) == {("Broker", "default", "b2"), et("kept"), et("moved")}
    # A replica that starts from a snapshot (retention dropped the head) cascades the same.
    other = StoreState()
    other.apply(8, as_read(s.snapshot_record()))
    assert set(other.entries) == set(s.entries)
    other.apply(9, {"op": "delete", "key": ["Broker", "default", "b2"]})
    assert set(other.entries) == {et("kept")}
    assert other._owned == {}


def test_a_file_keeps_what_it_defines():
    s = StoreState()
    s.apply(0, put(BR, broker(), origin="file", source="a.yaml"))
    edited = s.apply(1, put(BR, broker(x=1), origin="api"))
    assert edited.entry.origin == "file" and edited.entry.source == "a.yaml"
    api = ("Broker", "default", "api")
    s.apply(2, put(api, broker("api"), origin="api"))
    taken = s.apply(3, put(api, broker("api"), origin="file", source="b.yaml"))
    assert taken.result == "configured" and taken.entry.origin == "file"


def test_history_is_bounded():
    s = StoreState()
    for i in range(HISTORY + 3):
        s.apply(i, put(BR, broker(retry=i)))
    assert len(s.entries[BR].history) == HISTORY
    assert s.entries[BR].history[-1] == {"spec": {"retry": HISTORY + 1}}


def test_reading_a_truncated_stream_is_complete_from_the_first_snapshot():
    """Retention dropped offsets 0..9. The snapshot at 14 was taken at offset 12 (another
    replica wrote 13 meanwhile): the reader must end with the snapshot plus record 13."""
    full = StoreState()
    full.apply(0, put(BR, broker()))
    full.apply(12, put(("Broker", "default", "b12"), broker("b12")))
    snapshot = as_read(full.snapshot_record())
    assert snapshot["base"] == 12

    reader = StoreState()
    reader.apply(10, put(("Broker", "default", "b10"), broker("b10")))
    assert not reader.based
    reader.apply(13, put(("Broker", "default", "b13"), broker("b13")))
    reader.apply(14, snapshot)
    assert reader.based
    assert set(reader.entries) == {
        BR,
        ("Broker", "default", "b12"),
        ("Broker", "default", "b13"),
    }
    after = reader.apply(15, {"op": "delete", "key": list(BR)})
    assert after.result == "deleted"


def test_a_snapshot_is_written_as_each_entry_to_dict():
    """A snapshot holds the Entry objects, not deep copies of them (issue 13: a copy of
    5,000 Triggers was ~8 MiB of dicts): orjson must write them as `Entry.to_dict` would,
    history and nested manifests included, for readers of either version."""
    s = StoreState()
    s.apply(0, put(BR, broker(retry=1)))
    s.apply(1, put(BR, broker(retry=2)))  # an entry with history
    s.apply(2, put(("Broker", "default", "b2"), broker("b2", delivery={"retry": 3})))
    record = s.snapshot_record()
    expected = {
        "op": "snapshot",
        "base": 2,
        "entries": [e.to_dict() for e in s.entries.values()],
    }
    assert as_read(record) == expected
    assert s.entries[BR].history == [{"spec": {"retry": 1}}]


def test_a_based_reader_ignores_snapshots_but_counts_from_them():
    s = StoreState()
    s.apply(0, put(BR, broker()))
    s.apply(1, put(("Broker", "default", "b"), broker("b")), size=100)
    assert s.records_since_snapshot == 2 and s.bytes_since_snapshot == 100
    stale = {"op": "snapshot", "base": 0, "entries": []}
    s.apply(2, stale)
    assert len(s.entries) == 2  # what it already had is at least as new
    assert s.records_since_snapshot == 0 and s.bytes_since_snapshot == 0
