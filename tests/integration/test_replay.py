"""Archive and replay (issue 14, docs/replay.md) against real RabbitMQ and real HTTP sinks."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from tests.integration.test_cli import rabbitmesh
from tests.support.api import TRIGGERS, call, trigger
from tests.support.events import binary_headers
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.rabbit import list_names
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

REPLAYS = "/apis/rabbitmesh.dev/v1alpha1/namespaces/default/replays"

ARCHIVED_BROKER = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata:
      name: br
      annotations: {"rabbitmesh.dev/archive-retention": "P1D"}
    """


async def send(url: str, n: int, prefix: str) -> list[str]:
    """n events one after the other (each after the previous 202); odd ones have
    subject=keep, even ones subject=skip; every third one has type com.example.other."""
    ids = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            eid = f"{prefix}{i}"
            type_ = "com.example.other" if i % 3 == 2 else "com.example.replay"
            headers = binary_headers(type_, eid, subject="keep" if i % 2 else "skip")
            async with s.post(url, headers=headers, data=b"{}") as r:
                assert r.status == 202, await r.text()
            ids.append(eid)
    return ids


def replay_manifest(name: str, start: datetime, **destination: str) -> dict:
    return {
        "apiVersion": "rabbitmesh.dev/v1alpha1",
        "kind": "Replay",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "broker": "br",
            "from": start.isoformat().replace("+00:00", "Z"),
            "filter": "subject = 'keep'",
            "destination": destination,
        },
    }


def succeeded(obj: dict) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Succeeded":
            return c["status"]
    return None


async def test_replay_into_a_trigger_created_after_the_events(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(ARCHIVED_BROKER)
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = await send(mesh.url + "/default/br", 30, "old")
    # A trigger made afterwards, with a filter of its own: only com.example.replay.
    tr = trigger("late", "br", sink.url, filter={"attributes": {"type": "com.example.replay"}})
    tr["metadata"]["annotations"] = ORDERED_ONE_LANE  # delivered strictly in queue order
    status, body = await call("POST", mesh.url + TRIGGERS.format(ns="default"), tr)
    assert status == 201, body
    run = await rabbitmesh(
        "replay", "create", "again", "--broker", "br",
        "--from", before.isoformat().replace("+00:00", "Z"),
        "--filter", "subject = 'keep'", "--trigger", "late",
        server=mesh.url,
    )  # fmt: skip
    assert run.code == 0, run
    live = await send(mesh.url + "/default/br", 4, "new")  # after the Replay: not replayed

    expected = [e for i, e in enumerate(ids) if i % 2 == 1 and i % 3 != 2]
    live_expected = [e for i, e in enumerate(live) if i % 3 != 2]

    async def finished() -> dict | None:
        status, obj = await call("GET", mesh.url + REPLAYS + "/again")
        return obj if status == 200 and succeeded(obj) == "True" else None

    obj = await eventually(finished, timeout=60, what="replay succeeded")
    await sink.wait_for(len(expected) + len(live_expected), timeout=30)
    replayed = [r for r in sink.received if r.headers.get("ce-rabbitmeshreplay") == "again"]
    # Exactly once each, in arrival order, the archived event unchanged plus the extension.
    assert [r.ce_id for r in replayed] == expected
    assert all(r.headers["ce-subject"] == "keep" for r in replayed)
    assert obj["status"]["replayedCount"] == obj["status"]["totalCount"] == len(expected)
    plain = [r.ce_id for r in sink.received if "ce-rabbitmeshreplay" not in r.headers]
    assert plain == live_expected  # the live ones came live, once, and were not replayed

    listed = await rabbitmesh("replay", "list", server=mesh.url)
    assert listed.code == 0 and "again" in listed.out and f"{len(expected)}/" in listed.out
    described = await rabbitmesh("replay", "describe", "again", server=mesh.url)
    assert described.code == 0 and "trigger:late" in described.out, described
    deleted = await rabbitmesh("replay", "delete", "again", server=mesh.url)
    assert deleted.code == 0, deleted


async def test_replay_to_a_sink_and_removing_the_archive(start_mesh, make_sink, prefix):
    sink = await make_sink()
    mesh = await start_mesh(ARCHIVED_BROKER)
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = await send(mesh.url + "/default/br", 6, "s")
    status, body = await call(
        "POST", mesh.url + REPLAYS, replay_manifest("tosink", before, uri=sink.url)
    )
    assert status == 201, body
    await sink.wait_for(3, timeout=30)
    assert sorted(r.ce_id for r in sink.received) == sorted(ids[1::2])
    archive = f"{prefix}.archive.default.br"
    assert archive in list_names("queues", prefix)
    # Removing the annotation removes the archive.
    broker = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
              "metadata": {"name": "br", "namespace": "default"}, "spec": {}}  # fmt: skip
    status, body = await call(
        "PUT", mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/brokers/br", broker
    )
    assert status == 200, body
    await eventually(
        lambda: archive not in list_names("queues", prefix), timeout=20, what="archive deleted"
    )


async def test_bad_replays_and_archive_annotations_are_refused(start_mesh):
    mesh = await start_mesh(ARCHIVED_BROKER)
    good = replay_manifest("r", datetime.now(UTC), trigger="t")
    cases = [
        ({"from": "yesterday"}, "spec.from"),
        ({"from": "2026-01-01T00:00:00"}, "spec.from"),
        ({"to": "2020-01-01T00:00:00Z"}, "spec.to"),
        ({"filter": "subject = "}, "spec.filter"),
        ({"destination": {"trigger": "t", "uri": "http://x/"}}, "spec.destination"),
    ]
    for change, field in cases:
        bad = json.loads(json.dumps(good))
        bad["spec"].update(change)
        status, body = await call("POST", mesh.url + REPLAYS, bad)
        assert status == 422, (change, body)
        assert field in json.dumps(body), (change, body)
    notes = {"rabbitmesh.dev/archive-retention": "a week"}
    broker = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
              "metadata": {"name": "b2", "namespace": "default", "annotations": notes}}  # fmt: skip
    status, body = await call(
        "POST", mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/brokers", broker
    )
    assert status == 422 and "rabbitmesh.dev/archive-retention" in json.dumps(body), body


ORDERED_ONE_LANE = {"rabbitmesh.dev/delivery-order": "ordered", "rabbitmesh.dev/partitions": "1"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_replay_resumes_without_duplicates_after_a_restart(tmp_path, prefix, make_sink, sig):
    sink = await make_sink()
    write_manifests(tmp_path / "c", ARCHIVED_BROKER)
    env = {"RABBITMESH_REPLAY_RATE": "20"}
    a = await MeshProcess(tmp_path / "c", prefix, **env).start()
    b: MeshProcess | None = None
    try:
        before = datetime.now(UTC) - timedelta(seconds=1)
        ids = await send(a.url + "/default/br", 120, "k")
        expected = [e for i, e in enumerate(ids) if i % 2 == 1]  # 60 at 20/s: ~3s
        # Ordered through one partition: the trigger delivers strictly in queue order.
        tr = trigger("late", "br", sink.url)
        tr["metadata"]["annotations"] = ORDERED_ONE_LANE
        status, body = await call("POST", a.url + TRIGGERS.format(ns="default"), tr)
        assert status == 201, body
        started = time.monotonic()
        status, body = await call(
            "POST", a.url + REPLAYS, replay_manifest("slow", before, trigger="late")
        )
        assert status == 201, body
        await sink.wait_for(15, timeout=30)
        # Paced (attack test, docs/security.md): at 20/s, 15 events cannot all come at once.
        assert time.monotonic() - started >= 0.5
        a.signal(sig)
        await a.wait()
        at_stop = len(sink.received)
        assert at_stop < len(expected), "stopped too late to test a resume"
        b = await MeshProcess(tmp_path / "c", prefix, **env).start()

        async def finished() -> dict | None:
            status, obj = await call("GET", b.url + REPLAYS + "/slow")
            return obj if status == 200 and succeeded(obj) == "True" else None

        obj = await eventually(finished, timeout=60, what="replay succeeded")
        await eventually(
            lambda: set(expected) <= {r.ce_id for r in sink.received},
            timeout=30,
            what="every replayed event delivered",
        )
        got = [r.ce_id for r in sink.received]
        assert obj["status"]["replayedCount"] == obj["status"]["totalCount"] == len(expected)
        if sig == signal.SIGTERM:
            # A graceful stop finishes deliveries in flight: any duplicate would be the
            # Replay's own, and there is none; the order is the archive's.
            assert got == expected
        else:
            # SIGKILL: the Replay sent each event once (its transactions), so first
            # deliveries are in archive order. Downstream, two at-least-once stages may each
            # repeat the one message they had in flight at the kill (one lane): the splitter's
            # copy (confirmed, not yet acked) and the worker's delivery (prefetch 1), maybe the
            # same event. A Replay resumed from an older position repeats a batch (~20).
            firsts = list(dict.fromkeys(got))
            assert firsts == expected
            extra = len(got) - len(firsts)
            assert extra <= 2, (extra, at_stop, got)
    finally:
        await asyncio.gather(a.stop(), *([b.stop()] if b else []))


async def test_two_replicas_replay_each_event_once(start_mesh, make_sink):
    """Both replicas reconcile the Replay; only the one holding its lease sends."""
    sink = await make_sink()
    a = await start_mesh(ARCHIVED_BROKER)
    b = await start_mesh(ARCHIVED_BROKER)  # the same prefix: a second replica
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = await send(a.url + "/default/br", 20, "two")
    tr = trigger("late", "br", sink.url)
    tr["metadata"]["annotations"] = ORDERED_ONE_LANE
    status, body = await call("POST", a.url + TRIGGERS.format(ns="default"), tr)
    assert status == 201, body
    status, body = await call(
        "POST", b.url + REPLAYS, replay_manifest("both", before, trigger="late")
    )
    assert status == 201, body
    expected = ids[1::2]

    async def done_somewhere() -> bool:
        for mesh in (a, b):
            status, obj = await call("GET", mesh.url + REPLAYS + "/both")
            if status == 200 and succeeded(obj) == "True":
                return True
        return False

    await eventually(done_somewhere, timeout=60, what="replay succeeded on one replica")
    await sink.wait_for(len(expected), timeout=30)
    assert [r.ce_id for r in sink.received] == expected


async def test_replays_with_extreme_times_finish(start_mesh, make_sink):
    """A `from` after the Replay's creation made its reader wait for the end marker from a
    point past it (StreamReadTimeout, again every 7 s, for ever); a `from` in year 1 made
    the start overflow (OverflowError, again every 2 s, for ever). Neither ever finished.
    Now the first is an empty window, done at once; the second reads the whole archive."""
    sink = await make_sink()
    mesh = await start_mesh(ARCHIVED_BROKER)
    status, body = await call(
        "POST", mesh.url + TRIGGERS.format(ns="default"), trigger("t", "br", sink.url)
    )
    assert status == 201, body
    ids = await send(mesh.url + "/default/br", 3, "x")
    await sink.wait_for(3, timeout=30)
    for name, start in [
        ("future", "9999-12-31T23:59:59Z"),
        ("ancient", "0001-01-01T00:00:00-23:59"),
        ("old", "1900-01-01T00:00:00Z"),
    ]:
        replay = {
            "apiVersion": "rabbitmesh.dev/v1alpha1",
            "kind": "Replay",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"broker": "br", "from": start, "destination": {"trigger": "t"}},
        }
        status, body = await call("POST", mesh.url + REPLAYS, replay)
        assert status == 201, body

    async def done(name: str) -> dict | None:
        status, obj = await call("GET", mesh.url + REPLAYS + "/" + name)
        return obj["status"] if status == 200 and succeeded(obj) == "True" else None

    future = await eventually(lambda: done("future"), timeout=20, what="future replay done")
    assert future["totalCount"] == future["replayedCount"] == 0
    for name in ("ancient", "old"):
        st = await eventually(lambda n=name: done(n), timeout=20, what=f"{name} replay done")
        assert st["totalCount"] == st["replayedCount"] == 3
    await sink.wait_for(9, timeout=30)
    replayed = Counter(r.ce_id for r in sink.received if "ce-rabbitmeshreplay" in r.headers)
    assert replayed == Counter({i: 2 for i in ids})


async def test_watchers_see_a_replays_progress(start_mesh, make_sink):
    """The runner writes a Replay's progress outside any reconcile; `?watch=true` (and the
    console, which follows it) still gets it: a MODIFIED event with the final counts."""
    sink = await make_sink()
    mesh = await start_mesh(ARCHIVED_BROKER)
    before = datetime.now(UTC) - timedelta(seconds=1)
    await send(mesh.url + "/default/br", 6, "w")
    async with aiohttp.ClientSession() as s, s.get(mesh.url + REPLAYS + "?watch=true") as watch:
        status, body = await call(
            "POST", mesh.url + REPLAYS, replay_manifest("watched", before, uri=sink.url)
        )
        assert status == 201, body

        async def counts_done() -> bool:
            while True:
                line = await watch.content.readline()
                assert line, "the watch stream ended"
                status = json.loads(line)["object"].get("status") or {}
                if status.get("replayedCount") == status.get("totalCount") == 3:
                    return True

        assert await asyncio.wait_for(counts_done(), 30)
