"""The resource store: durable in RabbitMQ across restarts, shared, and kept bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.store.stream import Store, StoreUnavailable
from tests.support.api import BROKERS, TRIGGERS, broker, call, ready, trigger
from tests.support.disruption import node_stopped
from tests.support.events import post_binary
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import write_manifests
from tests.support.rabbit import rabbitmqctl
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def bindings_of(queue: str) -> set[tuple[str, str]]:
    """(exchange, key) bindings of a queue, as RabbitMQ reports them (default exchange aside)."""
    out = rabbitmqctl(
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "routing_key",
    )
    found = set()
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == queue and parts[0]:
            found.add((parts[0], parts[2]))
    return found


async def test_resources_from_the_api_survive_a_restart_of_rabbitmesh(start_mesh, make_sink):
    sink = await make_sink()
    first = await start_mesh("")
    await call("POST", first.url + BROKERS.format(ns="default"), broker("br"))
    await call("POST", first.url + TRIGGERS.format(ns="default"), trigger("tr", "br", sink.url))
    await first.stop()

    second = await start_mesh("")  # same prefix, nothing in its config dir
    status, tr = await call("GET", second.url + TRIGGERS.format(ns="default") + "/tr")
    assert status == 200 and ready(tr) == ("True", "TriggerReady")
    assert tr["metadata"]["generation"] == 1
    _, eid = await post_binary(second.url + "/default/br")
    (got,) = await sink.wait_for(1)
    assert got.ce_id == eid


@pytest.mark.disruptive
async def test_the_store_survives_a_restart_of_rabbitmq(start_mesh):
    mesh = await start_mesh("")
    brokers = mesh.url + BROKERS.format(ns="default")
    assert (await call("POST", brokers, broker("before")))[0] == 201
    async with node_stopped():
        pass  # stopped and started at once: the restart is the fault

    async def created_after() -> bool:
        return (await call("POST", brokers, broker("after")))[0] in (201, 409)

    await eventually(created_after, timeout=60, interval=0.5, what="API writes after restart")
    _, listed = await call("GET", brokers)
    assert {b["metadata"]["name"] for b in listed["items"]} == {"before", "after"}
    fresh = await start_mesh("")  # reads the stream RabbitMQ kept on disk
    _, listed = await call("GET", fresh.url + BROKERS.format(ns="default"))
    assert {b["metadata"]["name"] for b in listed["items"]} == {"before", "after"}


async def test_a_new_replica_reads_a_stream_that_retention_has_cut(start_mesh, monkeypatch):
    """With the smallest store (1 MiB, 128 KiB segments) and big records, RabbitMQ drops the
    head of the stream; snapshots keep a new replica's view complete."""
    writer = await start_mesh("", store_max_bytes=1024 * 1024)
    brokers = writer.url + BROKERS.format(ns="default")
    assert (await call("POST", brokers, broker("first")))[0] == 201  # only in the dropped head
    padding = "x" * 20_000
    for i in range(90):
        b = broker("busy")
        b["metadata"]["annotations"] = {"pad": padding, "n": str(i)}
        assert (await call("PUT" if i else "POST", f"{brokers}/busy" if i else brokers, b))[0] in (
            200,
            201,
        )
    assert (await call("DELETE", f"{brokers}/first"))[0] == 200
    assert (await call("POST", brokers, broker("last")))[0] == 201

    reader = await start_mesh("", store_max_bytes=1024 * 1024)
    state = reader.server.plane.store.state
    assert state.first_offset > 0, "retention did not cut the stream; the test proves nothing"
    assert state.based
    assert set(state.entries) == set(writer.server.plane.store.state.entries)
    _, busy = await call("GET", reader.url + BROKERS.format(ns="default") + "/busy")
    assert busy["metadata"]["annotations"]["n"] == "89"
    assert busy["metadata"]["generation"] == 1  # annotations are not spec


async def test_a_fresh_process_unbinds_what_an_earlier_filter_bound(tmp_path, start_mesh, prefix):
    """The filter changed while no rabbitmesh ran: the next one must not keep the old binding."""
    manifests = broker_and_trigger("http://127.0.0.1:9/", trigger="tr", filter_type="TYPE")
    first = await start_mesh(manifests.replace("TYPE", "com.example.old"))
    queue, exchange = f"{prefix}.trigger.default.tr", f"{prefix}.broker.default.br"
    assert bindings_of(queue) == {(exchange, "com.example.old")}
    await first.stop()
    second = await start_mesh(manifests.replace("TYPE", "com.example.new"))
    assert second.server.plane.store.state.entries[("Trigger", "default", "tr")].generation == 2
    assert bindings_of(queue) == {(exchange, "com.example.new")}


async def test_an_invalid_config_dir_at_start_still_stops_rabbitmesh(tmp_path, prefix):
    from rabbitmesh.resources.loader import ManifestError
    from tests.support.mesh import InProcessMesh

    write_manifests(tmp_path / "bad", "apiVersion: eventing.knative.dev/v1\nkind: Broker\n")
    mesh = InProcessMesh(tmp_path / "bad", prefix)
    with pytest.raises(ManifestError):
        await mesh.start()


async def test_start_up_waits_for_a_stream_rabbitmq_does_not_have_yet(rabbitmq, prefix, caplog):
    """While a RabbitMQ cluster forms, a stream declared a moment ago can answer 404
    (`stream_not_found`) to a consumer: start-up retries instead of exiting. Reproduced by
    consuming before the stream exists, then declaring it."""
    import asyncio
    import logging

    from rabbitmesh.amqp.client import AmqpClient
    from rabbitmesh.store.stream import Store

    caplog.set_level(logging.INFO, logger="rabbitmesh.streams")  # amqp/streams.py's probe
    publisher, consumer = AmqpClient(rabbitmq, "pub"), AmqpClient(rabbitmq, "con")
    await publisher.connect()
    await consumer.connect()
    store = Store(publisher, consumer, f"{prefix}.late.store", max_bytes=1 << 20, timeout=10)
    declare = store.declare

    async def not_yet() -> None:
        pass

    store.declare = not_yet  # type: ignore[method-assign]  # the stream is not there yet
    starting = asyncio.create_task(store.start())
    try:
        await eventually(
            lambda: "not consumable yet" in caplog.text, timeout=20, what="a retried consume"
        )
        assert not starting.done()
        await declare()
        await asyncio.wait_for(starting, 30)
        assert store._queue is not None and store._queue.name == f"{prefix}.late.store"
    finally:
        starting.cancel()
        await store.stop()
        await publisher.close()
        await consumer.close()


class _SlowInbox(asyncio.Queue):
    """A store reader's inbox that hands on each record `delay` seconds after it is asked
    for one (never, with None): a replica reading a long stream on a busy machine, or one
    whose reader is stuck."""

    def __init__(self, delay: float | None) -> None:
        super().__init__()
        self.delay = delay
        self.handed = 0

    async def get(self):  # type: ignore[override]
        msg = await super().get()
        if self.delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)  # reading is slow (not a wait for another task)
        self.handed += 1
        return msg


async def _clients(url: str) -> tuple[AmqpClient, AmqpClient]:
    publisher, consumer = AmqpClient(url, "pub"), AmqpClient(url, "con")
    await publisher.connect()
    await consumer.connect()
    return publisher, consumer


async def test_a_new_replica_reads_a_stream_longer_than_the_store_timeout(rabbitmq, prefix):
    """Was: a second replica against ~10,000 records gave up with `StoreUnavailable: ... not
    read back in time` (issue 13): its start waited for its own `hello` record for a fixed
    time, however fast it was reading. Now it waits as long as the reader keeps reading,
    and a reader that reads nothing for the timeout still fails."""
    publisher, consumer = await _clients(rabbitmq)
    queue = f"{prefix}.store"
    writer = Store(publisher, consumer, queue, max_bytes=16 << 20, timeout=10)
    reader = Store(publisher, consumer, queue, max_bytes=16 << 20, timeout=0.5)
    stuck = Store(publisher, consumer, queue, max_bytes=16 << 20, timeout=0.5)
    try:
        await writer.start()
        records = 200
        sem = asyncio.Semaphore(32)

        async def write(i: int) -> None:
            async with sem:
                manifest = broker(f"b{i}")
                outcome = await writer.apply(manifest, ("Broker", "default", f"b{i}"), origin="api")
                assert outcome.result == "created"

        await asyncio.gather(*(write(i) for i in range(records)))
        # 200 records at 10 ms each: two seconds of reading, four times the timeout.
        reader._inbox = inbox = _SlowInbox(0.01)
        started = time.monotonic()
        await reader.start()
        assert time.monotonic() - started > reader.timeout  # it did outlast the timeout
        assert inbox.handed > records
        assert set(reader.state.entries) == set(writer.state.entries)
        assert len(reader.state.entries) == records

        stuck._inbox = _SlowInbox(None)
        with pytest.raises(StoreUnavailable, match="not read back in time"):
            await asyncio.wait_for(stuck.start(), 30)
    finally:
        for store in (writer, reader, stuck):
            await store.stop()
        await publisher.close()
        await consumer.close()
