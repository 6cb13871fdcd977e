"""The control plane's failure branches, driven from outside: through the admin API, the store
stream in RabbitMQ and the config dir (not the reconciler's internals, which may change)."""

from __future__ import annotations

import asyncio
import logging
import shutil

import aio_pika
import aiohttp
import orjson
import pytest

from tests.support.api import BROKERS, EVENTTYPES, TRIGGERS, broker, call, ready, trigger
from tests.support.events import post_binary
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import AMQP_URL, InProcessMesh, MeshProcess, write_manifests
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NS = "default"


async def publish_to_store(prefix: str, *bodies: bytes) -> None:
    """Append raw records to the store stream, as a buggy or foreign writer would."""
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        for body in bodies:
            await ch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=2), routing_key=f"{prefix}.store"
            )


async def store_records(prefix: str) -> list[dict]:
    """Every JSON record of the store stream, from its first offset, each once: a record
    delivered twice (same `x-stream-offset`) is one record, two writes are two offsets."""
    conn = await aio_pika.connect(AMQP_URL)
    records: list[dict] = []
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=1000)
        queue = await ch.get_queue(f"{prefix}.store", ensure=True)
        length = await ch.declare_queue(f"{prefix}.store", passive=True)
        total = length.declaration_result.message_count or 0
        got = asyncio.Event()
        offsets: set[object] = set()

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            offset = (msg.headers or {}).get("x-stream-offset")
            await msg.ack()
            if offset in offsets:
                return
            offsets.add(offset)
            try:
                records.append(orjson.loads(msg.body))
            except orjson.JSONDecodeError:
                pass
            if len(offsets) >= total:
                got.set()

        tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        if total:
            await asyncio.wait_for(got.wait(), 30)
        await queue.cancel(tag)
    return records


# --- the API while the store is unavailable --------------------------------------------------


async def test_api_writes_get_503_with_retry_after_while_rabbitmq_is_cut_off(tmp_path, prefix):
    proxy = await TcpProxy().start()
    write_manifests(tmp_path / "c", "")
    mesh = await InProcessMesh(tmp_path / "c", prefix, amqp_url=proxy.url()).start()
    brokers = mesh.url + BROKERS.format(ns=NS)
    try:
        assert (await call("POST", brokers, broker("before")))[0] == 201
        proxy.cut()
        await eventually(lambda: not mesh.server.publisher.connected, what="disconnect seen")
        for method, url, body in [
            ("POST", brokers, broker("during")),
            ("DELETE", brokers + "/before", None),
        ]:
            status, answer = await call(method, url, body)
            assert status == 503, (method, answer)
            assert answer["reason"] == "ServiceUnavailable" and answer["error"], answer
        async with (
            aiohttp.ClientSession() as s,
            s.post(brokers, json=broker("during")) as r,
        ):
            assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
        # Reading is served from what this replica holds.
        assert (await call("GET", brokers + "/before"))[0] == 200
        proxy.restore()

        async def created() -> bool:
            return (await call("POST", brokers, broker("during")))[0] == 201

        await eventually(created, timeout=30, interval=0.3, what="201 after reconnect")
        _, listed = await call("GET", brokers)
        assert sorted(b["metadata"]["name"] for b in listed["items"]) == ["before", "during"]
    finally:
        await mesh.stop()
        await proxy.stop()


# --- the store stream -------------------------------------------------------------------------


async def test_a_store_stream_declared_earlier_with_other_limits_is_used_as_it_is(
    start_mesh, prefix, caplog
):
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue(
            f"{prefix}.store",
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-length-bytes": 3 * 1024 * 1024},
        )
    caplog.set_level(logging.WARNING, logger="rabbitmesh.store")
    mesh = await start_mesh("", store_max_bytes=8 * 1024 * 1024)
    assert "exists with other arguments" in caplog.text
    assert (await call("POST", mesh.url + BROKERS.format(ns=NS), broker("br")))[0] == 201
    again = await start_mesh("", store_max_bytes=8 * 1024 * 1024)  # a replica reads it too
    assert (await call("GET", again.url + BROKERS.format(ns=NS) + "/br"))[0] == 200


async def test_unreadable_records_in_the_stream_are_skipped(start_mesh, prefix, caplog):
    caplog.set_level(logging.WARNING, logger="rabbitmesh.store")
    first = await start_mesh("")
    brokers = BROKERS.format(ns=NS)
    assert (await call("POST", first.url + brokers, broker("one")))[0] == 201
    await publish_to_store(
        prefix,
        b"\xff\xfe not json",
        orjson.dumps({"op": "apply", "key": 5, "manifest": "no"}),  # JSON of the wrong shape
        orjson.dumps(["not", "a", "record"]),
    )
    # The replica that was running reads past them and keeps taking writes.
    assert (await call("POST", first.url + brokers, broker("two")))[0] == 201
    assert "not JSON; skipped" in caplog.text
    assert "unreadable record skipped" in caplog.text
    # A replica starting now reads the whole stream, the bad records included.
    fresh = await start_mesh("")
    _, listed = await call("GET", fresh.url + brokers)
    assert sorted(b["metadata"]["name"] for b in listed["items"]) == ["one", "two"]
    assert (await call("POST", fresh.url + brokers, broker("three")))[0] == 201


async def test_two_replicas_racing_to_create_one_name_one_wins(start_mesh):
    a, b = await start_mesh(""), await start_mesh("")
    for round_ in range(5):
        name = f"race{round_}"
        (sa, ba), (sb, bb) = await asyncio.gather(
            call("POST", a.url + BROKERS.format(ns=NS), broker(name)),
            call("POST", b.url + BROKERS.format(ns=NS), broker(name)),
        )
        assert sorted([sa, sb]) == [201, 409], (ba, bb)
        loser = ba if sa == 409 else bb
        winner = ba if sa == 201 else bb
        assert loser["reason"] == "AlreadyExists"
        # Both replicas hold the winner's object.
        for mesh in (a, b):
            _, got = await call("GET", mesh.url + BROKERS.format(ns=NS) + f"/{name}")
            assert got["metadata"]["uid"] == winner["metadata"]["uid"]


async def test_a_snapshot_is_written_after_a_number_of_records(start_mesh, prefix, monkeypatch):
    from rabbitmesh.store import stream

    # The count is lowered so the test writes 30 records, not 1000; the rest is as it runs.
    monkeypatch.setattr(stream, "SNAPSHOT_RECORDS", 25)
    mesh = await start_mesh("", store_max_bytes=64 * 1024 * 1024)  # never due by size
    for i in range(30):
        assert (await call("POST", mesh.url + BROKERS.format(ns=NS), broker(f"b{i}")))[0] == 201

    async def snapshots() -> list[dict]:
        return [r for r in await store_records(prefix) if r.get("op") == "snapshot"]

    (snap,) = await eventually(snapshots, timeout=30, interval=0.5, what="a snapshot record")
    names = {e.get("name") for e in snap["entries"] if e.get("kind") == "Broker"}
    assert {f"b{i}" for i in range(24)} <= names  # everything written before it
    ops = [r.get("op") for r in await store_records(prefix)]
    assert ops.index("snapshot") >= 25  # not before the count of records was reached


# --- a failed reconcile -------------------------------------------------------------------------


async def test_a_failed_reconcile_is_retried_without_another_change(start_mesh, prefix, make_sink):
    """A queue the trigger needs exists with arguments rabbitmesh cannot declare it with: the
    trigger is not ready. Once the obstacle is gone, a retry (no new write) makes it ready."""
    sink = await make_sink()
    queue = f"{prefix}.trigger.{NS}.tr"
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True, arguments={"x-max-length": 7})
    mesh = await start_mesh("")
    await call("POST", mesh.url + BROKERS.format(ns=NS), broker("br"))
    await call("POST", mesh.url + TRIGGERS.format(ns=NS), trigger("tr", "br", sink.url))
    tr_url = mesh.url + TRIGGERS.format(ns=NS) + "/tr"

    async def trigger_ready() -> str:
        return ready((await call("GET", tr_url))[1])[0]

    assert await eventually(trigger_ready, what="the trigger's status") != "True"
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        await ch.queue_delete(queue)
    await eventually(
        lambda: _is(trigger_ready(), "True"), timeout=30, interval=0.2, what="ready on retry"
    )
    status, _ = await post_binary(mesh.url + f"/{NS}/br")
    assert status == 202
    await sink.wait_for(1)


async def _is(value, expected) -> bool:
    return (await value) == expected


# --- the config dir ---------------------------------------------------------------------------

BASE = broker_and_trigger("http://127.0.0.1:9/", trigger="tr1")
TR2 = """
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: tr2}
spec: {broker: br, subscriber: {uri: "http://127.0.0.1:9/"}}
"""


async def _polls(mesh, more: int) -> None:
    config = mesh.server.plane.config
    target = config.polls + more
    await eventually(lambda: config.polls >= target, timeout=20, interval=0.01, what="polls")


async def _uid(mesh, name: str) -> str | None:
    status, tr = await call("GET", mesh.url + TRIGGERS.format(ns=NS) + f"/{name}")
    return tr["metadata"]["uid"] if status == 200 else None


async def test_a_file_caught_half_written_is_not_applied(start_mesh):
    mesh = await start_mesh(BASE + TR2)
    path = mesh.settings.config_dir / "manifests.yaml"
    uid = await _uid(mesh, "tr2")
    assert uid
    path.write_text(BASE)  # an editor mid-write: tr2's document not there yet
    await _polls(mesh, 1)  # seen once: not stable yet
    path.write_text(BASE + TR2)  # the write completes
    await _polls(mesh, 4)
    assert await _uid(mesh, "tr2") == uid  # never deleted (and re-created)


async def test_a_file_that_is_not_utf8_is_refused_and_the_last_good_state_kept(
    start_mesh, caplog, tmp_path, prefix
):
    caplog.set_level(logging.ERROR, logger="rabbitmesh.config")
    mesh = await start_mesh(BASE)
    config = mesh.settings.config_dir
    (config / "bad.yaml").write_bytes(b"kind: Broker\nmetadata: {name: caf\xe9}\n")
    await eventually(lambda: "cannot read" in caplog.text, timeout=10, what="the error")
    assert "bad.yaml" in caplog.text
    assert await _uid(mesh, "tr1")
    # At start, the same file stops rabbitmesh with the same clear message.
    proc = MeshProcess(config, prefix + "x")
    with pytest.raises(Exception):  # noqa: B017 - it exits instead of becoming ready
        await proc.start(timeout=30)
    try:
        assert await proc.wait(30) != 0
        assert "bad.yaml" in proc.output() and "cannot read" in proc.output()
    finally:
        await proc.stop()


async def test_a_config_dir_that_disappears_deletes_nothing_and_comes_back(start_mesh):
    mesh = await start_mesh(BASE + TR2)
    config = mesh.settings.config_dir
    uids = [await _uid(mesh, "tr1"), await _uid(mesh, "tr2")]
    shutil.rmtree(config)
    await _polls(mesh, 4)
    assert [await _uid(mesh, "tr1"), await _uid(mesh, "tr2")] == uids
    config.mkdir()
    (config / "manifests.yaml").write_text(BASE)  # back, without tr2
    await eventually(
        lambda: _is(_uid(mesh, "tr2"), None), timeout=10, what="tr2 deleted when dir is back"
    )
    assert await _uid(mesh, "tr1") == uids[0]


# --- EventType auto-creation ----------------------------------------------------------------

AUTO = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: br}
"""


async def _event_types(mesh) -> dict[str, dict]:
    _, listed = await call("GET", mesh.url + EVENTTYPES.format(ns=NS))
    return {
        next(a["value"] for a in e["spec"]["attributes"] if a["name"] == "type"): e
        for e in listed["items"]
    }


async def test_eventtypes_seen_in_a_burst_are_created_once_each(start_mesh):
    mesh = await start_mesh(AUTO, eventtype_auto_create=True)
    types = [f"com.example.burst.{i}" for i in range(40)]
    statuses = await asyncio.gather(
        *(post_binary(mesh.url + f"/{NS}/br", t) for t in types for _ in range(3))
    )
    assert {s for s, _ in statuses} == {202}

    async def all_created() -> dict[str, dict]:
        found = await _event_types(mesh)
        return found if set(types) <= set(found) else {}

    found = await eventually(all_created, timeout=30, interval=0.3, what="40 EventTypes")
    assert set(found) == set(types)  # one each, none for anything else
    versions = {t: e["metadata"]["resourceVersion"] for t, e in found.items()}
    # Seen again: nothing is written again.
    await asyncio.gather(*(post_binary(mesh.url + f"/{NS}/br", t) for t in types[:5]))
    await _polls(mesh, 4)  # > 1 s of flushes
    again = await _event_types(mesh)
    assert {t: e["metadata"]["resourceVersion"] for t, e in again.items()} == versions


async def test_an_eventtype_flush_that_fails_is_retried(tmp_path, prefix, caplog):
    caplog.set_level(logging.WARNING, logger="rabbitmesh.eventtypes")
    proxy = await TcpProxy().start()
    write_manifests(tmp_path / "c", AUTO)
    mesh = await InProcessMesh(
        tmp_path / "c", prefix, amqp_url=proxy.url(), eventtype_auto_create=True
    ).start()
    try:
        # Accepted (RabbitMQ confirmed it), then RabbitMQ is cut off before the once-a-second
        # flush writes the EventType. Should the flush win the race, try again with another.
        for attempt in range(5):
            type_ = f"com.example.flush.{attempt}"
            assert (await post_binary(mesh.url + f"/{NS}/br", type_))[0] == 202
            proxy.cut()
            if type_ not in await _event_types(mesh):
                break
            proxy.restore()
            await eventually(lambda: mesh.server.publisher.connected, timeout=30, what="back")
        else:
            pytest.fail("the flush always came before the cut")
        await eventually(
            lambda: "not registered yet" in caplog.text, timeout=15, what="the failed flush"
        )
        assert type_ not in await _event_types(mesh)
        proxy.restore()

        async def created() -> bool:
            return type_ in await _event_types(mesh)

        await eventually(created, timeout=30, interval=0.3, what="the EventType on retry")
    finally:
        await mesh.stop()
        await proxy.stop()
