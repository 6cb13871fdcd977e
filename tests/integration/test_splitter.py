"""The ordered trigger's splitter (dispatch/ordered.py) against the real RabbitMQ: what it hands
back when a publish fails or the process dies mid-batch, and that order and no-loss hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from rabbitmesh.amqp.client import AmqpClient, PublishFailed
from rabbitmesh.dispatch import ordered
from rabbitmesh.dispatch.ordered import Splitter, partition_of
from tests.support.rabbit import rabbitmqctl
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


class _Publisher(AmqpClient):
    """The real client, with one publish of the splitter's made to fail or to hang (the
    process frozen, then killed, between two copies)."""

    def __init__(self, url: str, *, fail_at: int | None = None, hang_at: int | None = None):
        super().__init__(url, "splitter-test-pub")
        self.fail_at, self.hang_at = fail_at, hang_at
        self.calls = 0
        self.hung = asyncio.Event()

    async def publish(self, exchange: str, routing_key: str, message: Any, **kw: Any) -> bool:
        self.calls += 1
        if self.calls == self.fail_at:
            raise PublishFailed("test: not confirmed")
        if self.calls == self.hang_at:
            self.hung.set()
            await asyncio.Event().wait()
        return await super().publish(exchange, routing_key, message, **kw)


@pytest.fixture
async def queues(rabbitmq: str, prefix: str) -> AsyncIterator[tuple[str, list[str]]]:
    """An entry queue and two partitions (deleted afterwards)."""
    entry = f"{prefix}.split"
    parts = [f"{entry}:p0", f"{entry}:p1"]
    conn = await aio_pika.connect(rabbitmq)
    ch = await conn.channel()
    for name in (entry, *parts):
        await ch.declare_queue(name, durable=True)
    try:
        yield entry, parts
    finally:
        for name in (entry, *parts):
            with contextlib.suppress(Exception):
                await ch.queue_delete(name)
        await conn.close()


async def _fill(url: str, queue: str, events: list[tuple[str, str]]) -> None:
    """(id, partitionkey) events, published confirmed and in this order."""
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    for eid, key in events:
        msg = aio_pika.Message(eid.encode(), headers={"ce-id": eid, "ce-partitionkey": key})
        await ch.default_exchange.publish(msg, queue)
    await conn.close()


async def _drain(url: str, queue: str) -> list[str]:
    """Every message of a queue, in queue order (taken and acked)."""
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    q = await ch.declare_queue(queue, passive=True)
    got = []
    while (msg := await q.get(fail=False)) is not None:
        got.append(msg.body.decode())
        await msg.ack()
    await conn.close()
    return got


async def _depth(url: str, queue: str) -> int:
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    q = await ch.declare_queue(queue, passive=True)
    await conn.close()
    return int(q.declaration_result.message_count or 0)


def _keys_in_each_partition() -> tuple[str, str]:
    """Two keys that hash to partitions 0 and 1 of 2."""
    by_part: dict[int, str] = {}
    for i in range(100):
        by_part.setdefault(partition_of(f"k{i}", 2, 0), f"k{i}")
    return by_part[0], by_part[1]


@contextlib.asynccontextmanager
async def _splitting(
    url: str, entry: str, parts: list[str], publisher: AmqpClient, stop_timeout: float = 5
) -> AsyncIterator[tuple[Splitter, AmqpClient]]:
    """A running Splitter over `publisher` and a consumer client of its own (named
    splitter-test-con), both closed afterwards."""
    consumer = AmqpClient(url, "splitter-test-con")
    await publisher.connect()
    await consumer.connect()
    splitter = Splitter(queue=entry, partitions=parts, consumer=consumer, publisher=publisher)
    await splitter.start()
    try:
        yield splitter, consumer
    finally:
        await splitter.stop(timeout=stop_timeout)
        await publisher.close()
        await consumer.close()


async def test_a_splitter_killed_mid_batch_hands_back_only_what_it_had_not_moved(
    rabbitmq: str, queues: tuple[str, list[str]]
) -> None:
    """Found as 11 duplicates after a SIGKILL (test_replay): the batch was acked at its end,
    so every copy it had confirmed came back and was moved again. Now each message is acked
    once its copy is confirmed: the copy in flight is all a crash can repeat."""
    entry, parts = queues
    key0, _ = _keys_in_each_partition()
    await _fill(rabbitmq, entry, [(f"e{i}", key0) for i in range(10)])
    publisher = _Publisher(rabbitmq, hang_at=6)  # frozen before the 6th copy
    # stop_timeout 0: the splitter is frozen for good; it is cancelled at once.
    async with _splitting(rabbitmq, entry, parts, publisher, stop_timeout=0) as (_, consumer):
        await asyncio.wait_for(publisher.hung.wait(), 30)
        # The process dies: its connections go, RabbitMQ takes back what was not acked.
        assert consumer.connection is not None
        await consumer.connection.close()
        await eventually(
            lambda: _depth(rabbitmq, entry), timeout=20, what="unacked messages back in queue"
        )
        assert await _drain(rabbitmq, parts[0]) == [f"e{i}" for i in range(5)]
        assert await _drain(rabbitmq, entry) == [f"e{i}" for i in range(5, 10)]


async def test_an_unconfirmed_copy_hands_back_its_lane_from_there_in_order(
    rabbitmq: str, queues: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy RabbitMQ did not confirm: its lane's messages from that one on go back and are
    moved again, in order; what the other lane (and this one, before it) moved is not moved
    twice."""
    monkeypatch.setattr(ordered, "SPLIT_REQUEUE_PAUSE", 0.05)
    entry, parts = queues
    key0, key1 = _keys_in_each_partition()
    events = [(f"e{i}", key0 if i % 2 == 0 else key1) for i in range(12)]
    await _fill(rabbitmq, entry, events)
    publisher = _Publisher(rabbitmq, fail_at=5)
    async with _splitting(rabbitmq, entry, parts, publisher) as (splitter, _):
        await eventually(lambda: splitter.moved == 12, timeout=30, what="all 12 moved")
        assert publisher.calls == 13  # twelve copies and the one that failed
    assert await _drain(rabbitmq, parts[0]) == [e for e, k in events if k == key0]
    assert await _drain(rabbitmq, parts[1]) == [e for e, k in events if k == key1]
    assert await _depth(rabbitmq, entry) == 0


class _Gated(AmqpClient):
    """The real client, with one copy's publish held until released (a slow confirm, a
    publish waiting behind TCP flow control)."""

    def __init__(self, url: str, name: str, gate_at: int | None = None):
        super().__init__(url, name)
        self.gate_at = gate_at
        self.calls = 0
        self.hung = asyncio.Event()
        self.release = asyncio.Event()
        self.held: str | None = None  # the body of the copy held

    async def publish(self, exchange: str, routing_key: str, message: Any, **kw: Any) -> bool:
        self.calls += 1
        if self.calls == self.gate_at:
            self.held = message.body.decode()
            self.hung.set()
            await self.release.wait()
        return await super().publish(exchange, routing_key, message, **kw)


def _close_connection(name: str) -> None:
    """RabbitMQ closes the client's connection (CONNECTION_FORCED): aio-pika reconnects."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
    pids = [line.split("\t")[0] for line in out.splitlines() if name in line]
    assert pids, out
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: connection lost")


def _extra_and_late(got: list[list[str]], expected: list[list[str]]) -> tuple[int, list[str]]:
    """Per partition: first deliveries must be in order; returns the repeats and the repeats
    that came after a later event of their partition."""
    extra, late = 0, []
    for part, exp in zip(got, expected, strict=True):
        assert list(dict.fromkeys(part)) == exp, (part, exp)
        extra += len(part) - len(exp)
        for i, e in enumerate(part):
            if any(exp.index(x) > exp.index(e) for x in part[:i]):
                late.append(e)
    return extra, late


async def _fill_two_keys(url: str, entry: str, n: int) -> tuple[list[tuple[str, str]], str, str]:
    key0, key1 = _keys_in_each_partition()
    events = [(f"e{i}", key0 if i % 2 == 0 else key1) for i in range(n)]
    await _fill(url, entry, events)
    return events, key0, key1


async def test_the_consumer_connection_lost_mid_copy_repeats_only_the_copies_in_flight(
    rabbitmq: str, queues: tuple[str, list[str]]
) -> None:
    """RabbitMQ closes the splitter's consumer connection while a copy waits for its confirm;
    aio-pika reconnects before the copy is confirmed, and the splitter consumes again (its
    consume is not restored by aio-pika, see the F4 test below). Each lane repeats at most
    its copy in flight, right after itself. (With the batch acked at its end: 6 repeats,
    e0 e2 e4 e0 e2 e4 ...)."""
    entry, parts = queues
    events, key0, key1 = await _fill_two_keys(rabbitmq, entry, 40)
    publisher = _Gated(rabbitmq, "splitter-test-pub", gate_at=6)
    async with _splitting(rabbitmq, entry, parts, publisher) as (splitter, consumer):
        await asyncio.wait_for(publisher.hung.wait(), 30)
        reconnected = asyncio.Event()
        assert consumer.connection is not None
        consumer.connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        _close_connection("rabbitmesh-splitter-test-con")
        await asyncio.wait_for(reconnected.wait(), 30)  # channels and consumers restored
        publisher.release.set()

        async def moved() -> bool:
            return await _depth(rabbitmq, entry) == 0 and splitter.moved >= len(events) - 6

        await eventually(moved, timeout=30, what="everything moved")
    got = [await _drain(rabbitmq, p) for p in parts]
    expected = [[e for e, k in events if k == key] for key in (key0, key1)]
    extra, late = _extra_and_late(got, expected)
    assert extra <= 2, got
    assert not late, got


@contextlib.asynccontextmanager
async def _holder_and_standby(
    url: str, entry: str, parts: list[str], holder_url: str | None = None
) -> AsyncIterator[tuple[Splitter, Splitter, _Gated, AmqpClient]]:
    """Two replicas' splitters: A holds the queue with its 6th copy held in flight (its
    publisher `_Gated`), B stands by. A's consumer client connects to `holder_url` (default
    `url`). Yields A, B, A's publisher and A's consumer client; A's copy is released, both
    stopped and their clients closed afterwards."""
    pub_a = _Gated(url, "splitter-test-pub-a", gate_at=6)
    con_a = AmqpClient(holder_url or url, "splitter-test-con-a")
    pub_b = AmqpClient(url, "splitter-test-pub-b")
    con_b = AmqpClient(url, "splitter-test-con-b")
    for c in (pub_a, con_a, pub_b, con_b):
        await c.connect()
    a = Splitter(queue=entry, partitions=parts, consumer=con_a, publisher=pub_a)
    b = Splitter(queue=entry, partitions=parts, consumer=con_b, publisher=pub_b)
    await a.start()
    try:
        await asyncio.wait_for(pub_a.hung.wait(), 30)
        await b.start()
        yield a, b, pub_a, con_a
    finally:
        pub_a.release.set()
        await asyncio.gather(a.stop(timeout=5), b.stop(timeout=5))
        for c in (pub_a, con_a, pub_b, con_b):
            await c.close()


@pytest.mark.xfail(
    strict=True,
    reason="known limit, docs/ordering.md (where a repeat can land): a copy in flight at the "
    "old holder lands after the standby moved later events of its key (e5 after e39)",
)
async def test_a_standby_taking_over_does_not_get_overtaken_by_the_old_holders_copy(
    rabbitmq: str, queues: tuple[str, list[str]]
) -> None:
    """The holder loses its consumer connection while a copy is held before RabbitMQ routes
    it; the standby takes the queue over within a second and moves everything; then the old
    holder's copy lands, behind events of its key that came after it."""
    entry, parts = queues
    events, key0, key1 = await _fill_two_keys(rabbitmq, entry, 40)
    async with _holder_and_standby(rabbitmq, entry, parts) as (a, b, pub_a, _):
        _close_connection("rabbitmesh-splitter-test-con-a")

        async def taken_over() -> bool:
            return b.moved > 0 and await _depth(rabbitmq, entry) == 0

        await eventually(taken_over, timeout=30, what="the standby moved everything")
        pub_a.release.set()
        await eventually(lambda: pub_a.calls > 6 or not a.active, timeout=30, what="A's copy")

        async def settled() -> bool:
            return sum([await _depth(rabbitmq, p) for p in parts]) >= len(events) + 1

        with contextlib.suppress(AssertionError):  # A's copy: there or not, judged below
            await eventually(settled, timeout=5, what="A's copy landed")
    got = [await _drain(rabbitmq, p) for p in parts]
    expected = [[e for e, k in events if k == key] for key in (key0, key1)]
    _, late = _extra_and_late(got, expected)
    assert not late, got


class _Neighbour:
    """An ordinary consumer on a connection a splitter shares (the ConsumerPool puts every
    trigger's worker next to the splitters): what it receives, acked as it arrives."""

    def __init__(self, client: AmqpClient, queue: str) -> None:
        self.client, self.queue = client, queue
        self.got: list[str] = []

    async def start(self) -> None:
        ch = await self.client.channel(prefetch=10)
        q = await ch.get_queue(self.queue, ensure=True)  # as QueueWorker consumes

        async def arrived(msg: AbstractIncomingMessage) -> None:
            self.got.append(msg.body.decode())
            await msg.ack()

        await q.consume(arrived)

    async def receives(self, url: str, body: str, timeout: float) -> None:
        """Publishes `body` to the queue; returns once it arrived and was acked."""
        await _fill(url, self.queue, [(body, "")])

        async def acked() -> bool:
            return body in self.got and await _depth(url, self.queue) == 0

        await eventually(acked, timeout=timeout, what=f"{body} received and acked")


async def test_a_standby_taking_over_leaves_the_old_holders_shared_connection_working(
    rabbitmq: str, queues: tuple[str, list[str]], prefix: str
) -> None:
    """F4: the holder's consumer connection (shared with other queues' consumers) drops, the
    standby takes the queue over, the connection comes back. aio-pika restored every consumer
    of that connection, the splitter's exclusive one too: RabbitMQ refused it, aio-pika failed
    the whole restore, closed the connection and tried again a second later, for as long as
    the splitter did not close its channel (a copy waiting for its confirm: up to the publish
    timeout). The neighbour on that connection received nothing all that time. Now the
    splitter's consume is not restored: the connection comes back once and stays up, the
    splitter goes back to standing by, and nothing the two splitters moved is lost or out of
    order."""
    entry, parts = queues
    neighbour_queue = f"{prefix}.neighbour"
    conn = await aio_pika.connect(rabbitmq)
    await (await conn.channel()).declare_queue(neighbour_queue, durable=True)
    await conn.close()
    events, key0, key1 = await _fill_two_keys(rabbitmq, entry, 40)
    proxy = await TcpProxy().start()  # between A's consumer connection and RabbitMQ
    try:
        async with _holder_and_standby(rabbitmq, entry, parts, proxy.url()) as replicas:
            a, b, pub_a, con_a = replicas  # A holds the queue, its copy held until released
            neighbour = _Neighbour(con_a, neighbour_queue)
            await neighbour.start()
            await neighbour.receives(rabbitmq, "n0", timeout=10)
            assert con_a.connection is not None
            restored: list[bool] = []
            closed_after_restore: list[BaseException | None] = []
            con_a.connection.reconnect_callbacks.add(lambda *_: restored.append(True))
            con_a.connection.close_callbacks.add(
                lambda _c, exc=None: restored and closed_after_restore.append(exc)
            )
            proxy.cut()  # A's consumer connection is gone and cannot come back yet
            await eventually(lambda: b.active, timeout=30, what="the standby took over")
            proxy.restore()
            # Generous: the restore takes about a reconnect interval (1 s); the old code
            # failed it every second for as long as the copy was held (past this wait).
            await neighbour.receives(rabbitmq, "n1", timeout=15)
            await eventually(lambda: restored, timeout=15, what="A's connection restored")
            await neighbour.receives(rabbitmq, "n2", timeout=10)
            assert (len(restored), closed_after_restore) == (1, []), "restored, stays up"
            assert con_a.connected
            assert not a.active  # seen though its copy is still held (no other copy goes out)
            pub_a.release.set()  # A's copy goes out now; A stands by
            more = [(f"e{i}", key0 if i % 2 == 0 else key1) for i in range(40, 50)]
            await _fill(rabbitmq, entry, more)
            events += more

            async def settled() -> bool:
                moved = sum([await _depth(rabbitmq, p) for p in parts])
                return await _depth(rabbitmq, entry) == 0 and moved >= len(events)

            await eventually(settled, timeout=30, what="everything moved")
            assert b.active and not a.active
            await neighbour.receives(rabbitmq, "n3", timeout=10)
            assert (len(restored), closed_after_restore) == (1, [])
    finally:
        await proxy.stop()
    got = [await _drain(rabbitmq, p) for p in parts]
    expected = [[e for e, k in events if k == key] for key in (key0, key1)]
    extra, late = _extra_and_late(got, expected)  # nothing lost, first copies in order
    # The copy held at A is a repeat, and may land behind later events of its key (the known
    # limit of docs/ordering.md, the test above). Nothing else is repeated.
    assert extra <= 1 and set(late) <= {pub_a.held}, got
