"""Queue workers that share AMQP channels (amqp/pool.py, issue 13): each keeps its own
prefetch and order, a stopping one hands back exactly what it held while its neighbours go
on, the channel's acks never reach a neighbour's delivery, and a channel error or a
reconnect costs the neighbours nothing but redeliveries."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aio_pika
import pytest
from yarl import URL

from rabbitmesh.amqp.pool import ConsumerPool
from tests.integration.test_console import broker_tail, tail
from tests.support.api import BROKERS, TRIGGERS, call
from tests.support.events import post_binary, post_each_type
from tests.support.manifests import broker_manifest, trigger_manifest
from tests.support.mesh import InProcessMesh, write_manifests
from tests.support.rabbit import list_names, queue_depth, queued_messages, rabbitmqctl
from tests.support.sink import Received, Reply
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PREFETCH = 4


def _local_ports_to(remote_port: int | None) -> set[int]:
    """Local ports of this process's TCP connections to `remote_port` (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in list(f)[1:]:
                cols = row.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def own_connections(mesh: Any, name: str, rabbitmq: str | None = None) -> list[str]:
    """RabbitMQ's pids of the mesh's connections whose client name contains `name` (found
    among this process's sockets, so no other test's mesh is touched). Behind a TcpProxy
    (in this process too), `rabbitmq` is the URL the proxy forwards to."""
    mine = _local_ports_to(URL(rabbitmq or mesh.server.settings.amqp_url).port)
    out = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "peer_port", "client_properties"
    )
    return [
        line.split("\t")[0]
        for line in out.splitlines()
        if int(line.split("\t")[1]) in mine and name in line
    ]


def _close_workers_connection(mesh: Any, rabbitmq: str | None = None) -> None:
    """RabbitMQ closes the mesh's one workers' connection; aio-pika reconnects."""
    pids = own_connections(mesh, "rabbitmesh-workers-", rabbitmq)
    assert len(pids) == len(mesh.server.consumers.clients) == 1, pids
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: connection lost")


def _triggers(url: str, *names: str) -> str:
    """Broker `br` and a Trigger per name, each taking the events of that type."""
    return broker_manifest() + "".join(
        "---\n" + trigger_manifest(name, url, filter_type=name) for name in names
    )


@contextlib.asynccontextmanager
async def _behind_proxy(
    tmp_path: Path, prefix: str, manifests: str, **settings: Any
) -> AsyncIterator[tuple[InProcessMesh, TcpProxy]]:
    """A mesh whose connections go through a TcpProxy: closing the proxy keeps a connection
    RabbitMQ closed from coming back until it opens again (aio-pika retries every second)."""
    proxy = await TcpProxy().start()
    write_manifests(tmp_path / "behind", manifests)
    try:
        mesh = InProcessMesh(tmp_path / "behind", prefix, amqp_url=proxy.url(), **settings)
        await mesh.start()
        try:
            yield mesh, proxy
        finally:
            await mesh.stop()
    finally:
        await proxy.stop()


async def _workers_connection_down(mesh: InProcessMesh, proxy: TcpProxy, rabbitmq: str) -> None:
    """RabbitMQ closes the mesh's workers' connection, which stays down until `proxy.restore()`."""
    proxy.open = False  # new connections are refused; the others stay up
    _close_workers_connection(mesh, rabbitmq)
    client = mesh.server.consumers.clients[0]
    await eventually(lambda: not client.connected, what="the workers' connection down")


async def _restore_order(ctx: Any, first: str, then: str) -> None:
    """Make the workers' shared channel restore queue `first` before `then`: aio-pika keeps
    a channel's queues in the order they were first declared on it, so `then`'s worker
    starts again."""
    subscriber = ctx.workers[then].subscriber
    await ctx.stop_queue(then)
    await ctx.run_queue(then, subscriber)
    channel = ctx.workers[first]._channel
    assert ctx.workers[then]._channel is channel
    assert list(channel._queues) == [first, then]


def _consuming(worker: Any) -> Callable[[], Awaitable[bool]]:
    """Whether `worker` has a consumer on its (open) channel."""

    async def check() -> bool:
        channel = worker._channel
        if channel is None or channel.is_closed or worker._tag is None:
            return False
        return worker._tag in (await channel.get_underlay_channel()).consumers

    return check


async def _acked(queue: str) -> None:
    """Wait until `queue` holds no message, ready or unacknowledged."""
    await eventually(
        lambda: queued_messages(queue).get(queue) == 0, timeout=30, what=f"{queue} acked"
    )


def _resync(mesh: InProcessMesh) -> None:
    """Reconcile everything again, as after the control plane's reconnect: a Trigger's queue
    is declared and bound again."""
    assert mesh.server.plane is not None
    mesh.server.plane.resync()


async def _received(sink: Any, event_id: str | None) -> None:
    await eventually(
        lambda: any(r.ce_id == event_id for r in sink.received), timeout=30, what=f"{event_id}"
    )


def _hanging(_r: Received, _i: int) -> Reply:
    return Reply(200, delay=60)


async def _depth_is(queue: str, n: int) -> bool:
    return await queue_depth(queue) == n


async def test_workers_share_channels_and_the_last_one_out_closes_it(start_mesh, make_sink):
    sink = await make_sink()
    manifests = broker_manifest() + "".join(
        "---\n" + trigger_manifest(f"t{i}", sink.url, filter_type=f"ty{i}") for i in range(5)
    )
    mesh = await start_mesh(manifests, consumers_per_channel=2)
    pool = mesh.server.consumers
    # Five workers, two per channel: three channels on one connection.
    assert sorted(pool.shared_counts()) == [1, 2, 2]
    assert pool.counts() == [3]
    ids = await post_each_type(f"{mesh.url}/default/br", [f"ty{i}" for i in range(5)])
    got = await sink.wait_for(5)
    assert sorted(r.ce_id for r in got) == sorted(ids)
    for i in range(5):
        status, _ = await call("DELETE", mesh.url + TRIGGERS.format(ns="default") + f"/t{i}")
        assert status == 200
    await eventually(lambda: pool.counts() == [0], what="every shared channel closed")
    assert pool.shared_counts() == []


async def test_a_hanging_neighbour_keeps_its_own_prefetch_and_hands_back_what_it_held(
    start_mesh, make_sink
):
    """Two workers on one channel: one hangs holding its prefetch; the other still gets
    every event (prefetch is per consumer, not per channel); stopping the hanging one hands
    its deliveries back (none acked by the other's acks, none stuck unacked on the channel,
    which stays open), and the channel's ack bookkeeping is left with no gap."""
    hang = await make_sink(_hanging)
    fine = await make_sink()
    manifests = (
        broker_manifest()
        + "---\n"
        + trigger_manifest("slow", hang.url, filter_type="slow", delivery="{timeout: PT60S}")
        + "---\n"
        + trigger_manifest("fast", fine.url, filter_type="fast")
    )
    mesh = await start_mesh(
        manifests, consumers_per_channel=2, prefetch=PREFETCH, concurrency=1, shutdown_timeout=1
    )
    ctx = mesh.server.ctx
    slow_q = ctx.names.trigger_queue("default", "slow")
    fast_q = ctx.names.trigger_queue("default", "fast")
    slow, fast = ctx.workers[slow_q], ctx.workers[fast_q]
    assert slow._channel is fast._channel  # the premise: one channel
    channel = slow._channel

    # The slow trigger's first event is delivered (and hangs) before the others are sent:
    # its delivery tag is lower than every fast one, so a `multiple` ack of theirs would
    # reach it.
    status, first = await post_binary(f"{mesh.url}/default/br", type_="slow")
    assert status == 202
    await hang.wait_for(1)
    for _ in range(3 * PREFETCH - 1):
        assert (await post_binary(f"{mesh.url}/default/br", type_="slow"))[0] == 202
    # It holds its prefetch and no more: the rest wait in RabbitMQ.
    await eventually(lambda: _depth_is(slow_q, 2 * PREFETCH), what="slow's prefetch held")
    ids = [(await post_binary(f"{mesh.url}/default/br", type_="fast"))[1] for _ in range(20)]
    got = await fine.wait_for(20)
    assert sorted(r.ce_id for r in got) == sorted(ids)

    await ctx.stop_queue(slow_q)
    # Everything it held is back, the hanging one included: not acked by fast's acks.
    await eventually(lambda: _depth_is(slow_q, 3 * PREFETCH), what="slow's deliveries back")
    assert not channel.is_closed  # fast still consumes on it
    assert mesh.server.consumers.shared_counts() == [1]
    last = (await post_binary(f"{mesh.url}/default/br", type_="fast"))[1]
    assert (await fine.wait_for(21))[-1].ce_id == last
    # Every delivery on the channel is settled: nothing held back, nothing kept in memory.
    acks = fast._acks  # the channel's own (batcher_for), shared with slow
    await eventually(
        lambda: all(not s.settled and not s.pending for s in acks._channels.values()),
        what="the channel's acks settled with no gap",
    )
    # The hanging event comes back first to the next consumer (queue order kept).
    hang_count = len(hang.received)
    await ctx.run_queue(slow_q, slow.subscriber)
    got_again = await hang.wait_for(hang_count + 1)
    assert got_again[hang_count].ce_id == first


async def test_a_channel_error_costs_the_neighbours_nothing(start_mesh, make_sink):
    """A consume of a missing queue (a race with another replica deleting it) makes RabbitMQ
    close the channel: the neighbour on it is consumed again (aio-pika reopens the channel),
    and the lease the failed worker took is given back."""
    sink = await make_sink()
    manifests = broker_manifest() + "---\n" + trigger_manifest("t", sink.url)
    mesh = await start_mesh(manifests, consumers_per_channel=4)
    ctx = mesh.server.ctx
    pool = mesh.server.consumers
    assert pool.shared_counts() == [1]
    subscriber = ctx.workers[ctx.names.trigger_queue("default", "t")].subscriber
    with pytest.raises(Exception, match="NOT_FOUND|not found"):
        await ctx.run_queue(ctx.names.trigger_queue("default", "ghost"), subscriber)
    assert pool.shared_counts() == [1]
    ids = [(await post_binary(f"{mesh.url}/default/br"))[1] for _ in range(5)]
    got = await sink.wait_for(5, timeout=30)
    assert sorted({r.ce_id for r in got}) == sorted(ids)


async def test_a_reconnect_does_not_restore_a_queue_deleted_after_its_worker_left(
    start_mesh, make_sink
):
    """aio-pika re-declares every queue a robust channel has seen when it reopens. A shared
    channel outlives its workers: a deleted Trigger's queue must leave its restore list, or
    the first reconnect fails the channel's restore and its other workers stop receiving."""
    sink = await make_sink()
    manifests = _triggers(sink.url, "gone", "stays")
    mesh = await start_mesh(manifests, consumers_per_channel=4)
    pool = mesh.server.consumers
    assert pool.shared_counts() == [2]
    status, _ = await call("DELETE", mesh.url + TRIGGERS.format(ns="default") + "/gone")
    assert status == 200
    await eventually(lambda: pool.shared_counts() == [1], what="the deleted trigger's worker gone")
    _close_workers_connection(mesh)
    ids = await post_each_type(f"{mesh.url}/default/br", ["stays"] * 3)
    got = await sink.wait_for(3, timeout=30)
    assert sorted({r.ce_id for r in got}) == sorted(ids)


def _channel_closing_callbacks(pool: ConsumerPool) -> int:
    """Callbacks pending on the `closing` futures of the pool's open channels (aiormq adds
    an observer there whenever something reads a channel's `closing`)."""
    total = 0
    for client in pool.clients:
        underlay = cast(Any, client.connection).transport.connection
        for channel in underlay.channels.values():
            total += len(channel._closing._callbacks or ())
    return total


async def test_a_queue_deleted_under_its_worker_is_consumed_again_when_it_is_back(
    start_mesh, make_sink, rabbitmq
):
    """Another replica (or the other worker process) deletes a Trigger's queue first:
    RabbitMQ cancels this worker's consumer. aio-pika's recovery of it walked every channel
    of the connection and left an observer on each one's `closing` per round, for as long
    as the channel lives: with shared channels, 313 of them at 5,000 Triggers, RSS grew
    ~59% over 10,000 writes with two worker processes (issue 13). The worker now consumes
    again itself, once the queue is back, and nothing is left on any channel."""
    sink = await make_sink()
    manifests = broker_manifest() + "".join(
        "---\n" + trigger_manifest(f"t{i}", sink.url, filter_type=f"ty{i}") for i in range(12)
    )
    mesh = await start_mesh(manifests, consumers_per_channel=3)
    pool = mesh.server.consumers
    ctx = mesh.server.ctx
    assert len(pool.shared_counts()) == 4
    queue = ctx.names.trigger_queue("default", "t0")
    worker = ctx.workers[queue]

    async def consuming() -> bool:
        assert worker._channel is not None
        underlay = await worker._channel.get_underlay_channel()
        return worker._tag is not None and worker._tag in underlay.consumers

    async def not_consuming() -> bool:
        return not await consuming()

    before = _channel_closing_callbacks(pool)
    conn = await aio_pika.connect(rabbitmq)
    try:
        ch = await conn.channel()
        await ch.queue_delete(queue)  # as another replica's delete would
        await eventually(not_consuming, what="the consumer cancelled by RabbitMQ")
        await ctx.declare_delivery_queue(queue)  # the name re-created meanwhile, and bound
        back = await ch.declare_queue(queue, passive=True)
        await back.bind(ctx.names.broker_exchange("default", "br"), "ty0")
    finally:
        await conn.close()
    await eventually(consuming, timeout=30, what="consuming again")
    status, eid = await post_binary(f"{mesh.url}/default/br", type_="ty0")
    assert status == 202
    assert (await sink.wait_for(1, timeout=30))[0].ce_id == eid
    assert _channel_closing_callbacks(pool) == before


async def test_a_reconnect_while_a_queue_is_deleted_under_its_worker_keeps_the_neighbours(
    start_mesh, make_sink, rabbitmq
):
    """A Trigger's queue is deleted under its live worker (by hand, or by another replica
    before this one hears of the delete): RabbitMQ cancels its consumer and the worker waits
    for the queue to come back. The queue must leave the shared channel's restore list
    meanwhile: restored after a reconnect, its passive declare failed (NOT_FOUND), so the
    whole connection's restore failed, every second, for as long as the queue stayed away:
    no worker on the connection consumed, and the neighbours' deliveries came back again
    and again (unacked when the connection dropped)."""
    sink = await make_sink()
    manifests = _triggers(sink.url, "gone", "stays")
    mesh = await start_mesh(manifests, consumers_per_channel=4)
    pool = mesh.server.consumers
    ctx = mesh.server.ctx
    assert pool.shared_counts() == [2]
    queue = ctx.names.trigger_queue("default", "gone")
    worker = ctx.workers[queue]
    conn = await aio_pika.connect(rabbitmq)
    try:
        ch = await conn.channel()
        await ch.queue_delete(queue)  # by hand: no Trigger delete follows
    finally:
        await conn.close()
    await eventually(lambda: worker._tag is None, what="the consumer cancelled by RabbitMQ")
    _close_workers_connection(mesh)
    ids = await post_each_type(f"{mesh.url}/default/br", ["stays"] * 3)
    got = await sink.wait_for(3, timeout=30)
    assert sorted({r.ce_id for r in got}) == sorted(ids)
    stays = ctx.names.trigger_queue("default", "stays")
    await eventually(lambda: _depth_is(stays, 0), timeout=30, what="the neighbour's queue acked")


async def _waits_then_consumes_again(mesh: Any, worker: Any, sink: Any) -> None:
    """Once the workers' connection is back, `worker` (Trigger "gone") waits for its queue;
    the Trigger's next reconcile (a resync) declares and binds it again, and the worker
    consumes it and delivers an event of its type."""
    await eventually(lambda: mesh.server.consumers.connected, what="the workers' connection up")
    assert worker._tag is None  # waiting for its queue
    _resync(mesh)
    await eventually(_consuming(worker), timeout=30, what="consuming its queue again")
    status, eid = await post_binary(f"{mesh.url}/default/br", type_="gone")
    assert status == 202
    await _received(sink, eid)


async def test_a_queue_deleted_while_the_connection_is_down_is_left_out_of_the_restore(
    tmp_path, prefix, make_sink, rabbitmq
):
    """A Trigger's queue is deleted while the workers' connection is down (by hand, or by
    another replica before this one hears of it). aio-pika restores a connection's channels
    all or nothing, a queue after another: the queue's passive declare failed (NOT_FOUND),
    and with it the whole connection's restore, every second, for as long as the queue stayed
    away; the workers restored after it received nothing (those before it got their events
    again on every attempt). Now the queue is left out of the restore and its worker, told as
    by a consumer cancel, consumes again once the queue is back."""
    sink = await make_sink()
    manifests = _triggers(sink.url, "gone", "stays")
    async with _behind_proxy(tmp_path, prefix, manifests, consumers_per_channel=4) as (mesh, proxy):
        pool = mesh.server.consumers
        ctx = mesh.server.ctx
        assert pool.shared_counts() == [2]
        queue = ctx.names.trigger_queue("default", "gone")
        stays = ctx.names.trigger_queue("default", "stays")
        # The missing queue first: aio-pika's restore never got to the neighbour.
        await _restore_order(ctx, queue, stays)
        worker = ctx.workers[queue]
        await _workers_connection_down(mesh, proxy, rabbitmq)
        conn = await aio_pika.connect(rabbitmq)
        try:
            await (await conn.channel()).queue_delete(queue)
        finally:
            await conn.close()
        proxy.restore()
        ids = await post_each_type(f"{mesh.url}/default/br", ["stays"] * 3)
        await _acked(stays)  # delivered (once each: nothing consumed on a failed restore)
        assert sorted(r.ce_id for r in sink.received) == sorted(ids)
        assert ctx.workers[queue] is worker
        await _waits_then_consumes_again(mesh, worker, sink)


async def test_a_queue_deleted_between_its_declare_and_its_consume_in_a_restore(
    tmp_path, prefix, make_sink, rabbitmq, monkeypatch
):
    """The race the restore cannot rule out: its queues are declared first, then consumed, so
    a queue deleted in between fails its consume (NOT_FOUND) after a neighbour may have been
    consumed on the channel RabbitMQ then closes. The channel is opened again without it,
    the neighbour consumed again, and the queue's worker waits for it to be back."""
    sink = await make_sink()
    manifests = _triggers(sink.url, "gone", "stays")
    async with _behind_proxy(tmp_path, prefix, manifests, consumers_per_channel=4) as (mesh, proxy):
        pool = mesh.server.consumers
        ctx = mesh.server.ctx
        assert pool.shared_counts() == [2]
        queue = ctx.names.trigger_queue("default", "gone")
        stays = ctx.names.trigger_queue("default", "stays")
        await _restore_order(ctx, stays, queue)  # the neighbour consumed before the 404
        worker = ctx.workers[queue]
        conn = await aio_pika.connect(rabbitmq)
        try:
            other = await conn.channel()
            declare = aio_pika.queue.Queue.declare
            deleted: list[str] = []

            async def declare_then_lose(self: Any, timeout: Any = None) -> Any:
                result = await declare(self, timeout)
                if self.name == queue and not deleted:
                    deleted.append(queue)
                    await other.queue_delete(queue)  # right after its restore declared it
                return result

            await _workers_connection_down(mesh, proxy, rabbitmq)
            monkeypatch.setattr(aio_pika.queue.Queue, "declare", declare_then_lose)
            proxy.restore()
            ids = await post_each_type(f"{mesh.url}/default/br", ["stays"] * 3)
            await _acked(stays)  # at least once: the neighbour may have been consumed first
            assert deleted == [queue]
        finally:
            await conn.close()
        assert {r.ce_id for r in sink.received} == set(ids)
        await _waits_then_consumes_again(mesh, worker, sink)


async def test_a_trigger_deleted_by_another_replica_while_the_connection_is_down(
    tmp_path, prefix, start_mesh, make_sink, rabbitmq
):
    """Another replica reconciles a Trigger's delete (and deletes its queue) while this
    one's workers' connection is down. This replica's worker stops: its consumer's cancel
    waits for the connection, so the queue leaves the channel's restore list before it, and
    the reconnect restores the neighbour alone."""
    sink = await make_sink()
    manifests = _triggers(sink.url, "gone", "stays")
    async with _behind_proxy(tmp_path, prefix, manifests, consumers_per_channel=4) as (mesh, proxy):
        pool = mesh.server.consumers
        ctx = mesh.server.ctx
        assert pool.shared_counts() == [2]
        queue = ctx.names.trigger_queue("default", "gone")
        other = await start_mesh(manifests, role="ingress")  # a replica delivering nothing
        await _workers_connection_down(mesh, proxy, rabbitmq)
        status, _ = await call("DELETE", other.url + TRIGGERS.format(ns="default") + "/gone")
        assert status == 200
        await eventually(lambda: queue not in list_names("queues", prefix), what="queue deleted")
        await eventually(lambda: queue not in ctx.workers, what="the delete heard")
        proxy.restore()
        ids = await post_each_type(f"{mesh.url}/default/br", ["stays"] * 3)
        await _acked(ctx.names.trigger_queue("default", "stays"))
        assert sorted(r.ce_id for r in sink.received) == sorted(ids)
        await eventually(lambda: pool.shared_counts() == [1], what="the worker gone")
        await eventually(lambda: pool.connected, what="the workers' connection up")


async def test_a_consumer_left_behind_by_a_stopped_worker_is_cancelled(start_mesh, make_sink):
    """A consume that completes while its worker stops (a start, or a consume-again after
    RabbitMQ cancelled the consumer, cut short by the stop) leaves a consumer nothing owns on
    a channel that stays open for the neighbours. Its first delivery must cancel it and go
    back to the queue; handed back alone, RabbitMQ gives it straight back to the same
    consumer, again and again."""
    sink = await make_sink()
    manifests = _triggers(sink.url, "left", "stays")
    mesh = await start_mesh(manifests, consumers_per_channel=4)
    ctx = mesh.server.ctx
    queue = ctx.names.trigger_queue("default", "left")
    worker = ctx.workers[queue]
    channel = worker._channel
    assert channel is not None
    await ctx.stop_queue(queue)
    assert not channel.is_closed  # "stays" consumes on it
    # What a consume cut short by the stop leaves: a consumer delivering to the stopped worker.
    orphan = await (await channel.get_queue(queue)).consume(worker._take)
    underlay = await channel.get_underlay_channel()
    assert orphan in underlay.consumers
    status, _ = await post_binary(f"{mesh.url}/default/br", type_="left")
    assert status == 202
    await eventually(lambda: orphan not in underlay.consumers, what="the orphan cancelled")
    await eventually(lambda: _depth_is(queue, 1), what="the event back in its queue")
    assert sink.received == []


async def test_a_console_tail_of_a_deleted_broker_does_not_stop_the_workers_connection(
    start_mesh, make_sink
):
    """A console tail's queue lives on the workers' connection, bound to the tailed Broker's
    exchange. The Broker is deleted while the tail is open, then the connection drops (a
    blip): aio-pika's restore bound the tail's queue again to an exchange that no longer
    exists (NOT_FOUND), which failed the whole connection's restore, every second, for ever
    (the tail's own cleanup waits for that connection too): every queue worker on it stopped,
    its in-flight events delivered again and again and never acked. Now the restore leaves
    out a queue (or binding) it finds gone, whoever consumes it."""
    sink = await make_sink()
    mesh = await start_mesh(_triggers(sink.url, "kept") + "---\n" + broker_manifest("tailed"))
    prefix = mesh.settings.topology_prefix
    kept = f"{prefix}.trigger.default.kept"
    tailed = f"{prefix}.broker.default.tailed"
    connection = mesh.server.consumers.clients[0].connection
    assert connection is not None
    restored: list[object] = []
    connection.reconnect_callbacks.add(lambda *_: restored.append(True))
    async with tail(mesh.url, broker_tail("tailed")):
        status, _ = await call("DELETE", mesh.url + BROKERS.format(ns="default") + "/tailed")
        assert status == 200
        await eventually(lambda: tailed not in list_names("exchanges", prefix), what="deleted")
        _close_workers_connection(mesh)
        # aio-pika calls reconnect_callbacks once every channel is restored: before, never.
        await eventually(lambda: bool(restored), timeout=30, what="the connection restored")
        ids = await post_each_type(f"{mesh.url}/default/br", ["kept"] * 3)
        await _acked(kept)
        assert {r.ce_id for r in sink.received} == set(ids)


async def test_a_worker_starts_with_its_consume_alone_and_is_restored_after_a_reconnect(
    start_mesh, make_sink, monkeypatch
):
    """A queue worker asks RabbitMQ nothing before its consume: the reconcile that starts it
    declared the queue a moment before (a passive declare per worker per process was 5,000
    round trips each at a cold start with 5,000 Triggers). After a reconnect its queue is
    still declared passively and consumed again."""
    from rabbitmesh.amqp.channels import TidyRobustChannel

    sink = await make_sink()
    mesh = await start_mesh(_triggers(sink.url, "before"))
    passive: list[str] = []
    declare = TidyRobustChannel.declare_queue

    async def counting(self: Any, name: str | None = None, **kwargs: Any) -> Any:
        if kwargs.get("passive"):
            passive.append(str(name))
        return await declare(self, name, **kwargs)

    monkeypatch.setattr(TidyRobustChannel, "declare_queue", counting)
    manifest = trigger_manifest("fresh", sink.url, filter_type="fresh")
    status, body = await call("POST", mesh.url + TRIGGERS.format(ns="default"), text=manifest)
    assert status == 201, body
    queue = mesh.server.names.trigger_queue("default", "fresh")
    worker = mesh.server.ctx.workers[queue]
    assert passive == []
    assert list(worker._channel._queues[queue])[0].passive  # restored as a passive declare
    (first,) = await post_each_type(f"{mesh.url}/default/br", ["fresh"])
    assert [r.ce_id for r in await sink.wait_for(1)] == [first]

    _close_workers_connection(mesh)
    client = mesh.server.consumers.clients[0]
    await eventually(lambda: client.connected and worker._tag is not None, what="reconnected")
    (second,) = await post_each_type(f"{mesh.url}/default/br", ["fresh"])
    await eventually(
        lambda: second in {r.ce_id for r in sink.received}, what="delivered after the reconnect"
    )


async def test_a_worker_leasing_a_channel_under_restore_consumes_only_once_it_is_restored(
    start_mesh, make_sink, prefix
):
    """A channel being restored after a reconnect already has its new underlay open and is
    leased to new workers; a worker that consumed at once put its queue where the restore
    then consumed it again under the same tag (DuplicateConsumerTag), which failed the whole
    connection's restore (found by review of d73d53e, whose worker no longer waited: the
    passive declare it dropped had waited for the restore). The restore in progress is the
    channel's "restored" event cleared, as aio-pika clears it while restoring."""
    import asyncio

    from rabbitmesh.amqp.channels import _RESTORED_ATTR

    sink = await make_sink()
    mesh = await start_mesh(_triggers(sink.url, "t1"))
    ctx, pool = mesh.server.ctx, mesh.server.consumers
    shared = ctx.workers[ctx.names.trigger_queue("default", "t1")]._channel
    restored = getattr(shared, _RESTORED_ATTR)
    restored.clear()
    try:
        manifest = trigger_manifest("t3", sink.url, filter_type="t3")
        post = asyncio.create_task(
            call("POST", mesh.url + TRIGGERS.format(ns="default"), text=manifest)
        )
        t3 = ctx.names.trigger_queue("default", "t3")
        await eventually(lambda: pool.shared_counts() == [2], what="t3's worker leased it")

        def consumers_of_t3() -> int:
            out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "consumers")
            return sum(int(c) for n, c in (r.split("\t") for r in out.splitlines()) if n == t3)

        with pytest.raises(AssertionError):  # the consume waits for the restore
            await eventually(lambda: consumers_of_t3() > 0, 2, 0.2, what="a consumer of t3")
        assert not post.done()
    finally:
        restored.set()
    status, body = await asyncio.wait_for(post, 30)
    assert status == 201, body
    await eventually(lambda: consumers_of_t3() == 1, what="t3 consumed once restored")
    ids = await post_each_type(f"{mesh.url}/default/br", ["t1", "t3"])
    await eventually(lambda: set(ids) <= {r.ce_id for r in sink.received}, what="delivered")
