"""The ack batcher (rabbitmesh/dispatch/acks.py) against the real RabbitMQ: `multiple` acks
only what is settled, never a delivery still in flight, and what is pending goes out before
a channel closes."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from rabbitmesh.dispatch.acks import AckBatcher
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def _deliveries(
    conn: aio_pika.abc.AbstractConnection, n: int, write_delay: float = 0.0
) -> tuple[str, list[AbstractIncomingMessage], list[tuple[int, bool]]]:
    """A fresh queue with `n` messages, all delivered (unacked) to one consumer; and the
    list the channel's basic.ack calls are recorded in (a spy on the real channel).
    `write_delay`: each ack waits this long before it goes to aiormq, as it does when
    aiormq's frame buffer is full on a busy connection (its `put` then suspends)."""
    ch = await conn.channel()
    queue = await ch.declare_queue("", exclusive=False, auto_delete=False)
    for i in range(n):
        await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), queue.name)
    got: list[AbstractIncomingMessage] = []
    consumer_ch = await conn.channel()
    await consumer_ch.set_qos(prefetch_count=n)
    q = await consumer_ch.get_queue(queue.name)
    await q.consume(got.append, no_ack=False)
    await eventually(lambda: len(got) == n, what=f"{n} deliveries")
    acks: list[tuple[int, bool]] = []
    underlay = got[0].channel
    real = underlay.basic_ack

    async def spy(delivery_tag: int, multiple: bool = False, wait: bool = True) -> Any:
        if write_delay:
            await asyncio.sleep(write_delay)  # a full frame buffer, not synchronisation
        acks.append((delivery_tag, multiple))
        return await real(delivery_tag, multiple=multiple, wait=wait)

    underlay.basic_ack = spy  # type: ignore[method-assign]
    return queue.name, got, acks


async def _delete(conn: aio_pika.abc.AbstractConnection, name: str) -> None:
    """The test's queue is server-named (no prefix the suite's clean-up knows): delete it."""
    if name:
        ch = await conn.channel()
        await ch.queue_delete(name)
        await ch.close()


async def _ready_count(conn: aio_pika.abc.AbstractConnection, name: str) -> int:
    ch = await conn.channel()
    q = await ch.declare_queue(name, passive=True)
    count = q.declaration_result.message_count or 0
    await ch.close()
    return count


async def test_multiple_acks_a_contiguous_run_and_never_an_unsettled_delivery(rabbitmq: str):
    consumer = await aio_pika.connect(rabbitmq)
    checker = await aio_pika.connect(rabbitmq)
    try:
        name = ""
        name, msgs, acks = await _deliveries(consumer, 10)
        batcher = AckBatcher()
        # Tags 1-4 succeed, 5 is still in flight, 6-10 succeed: one `multiple` ack for 1-4
        # and single acks for 6-10 (5 must stay unacked).
        for m in msgs[:4] + msgs[5:]:
            await batcher.ack(m)
            batcher.settled(m)
        await batcher.drain()
        assert acks[0] == (4, True)
        assert sorted(acks[1:]) == [(t, False) for t in range(6, 11)]
        # Tag 5 finishes: it closes the gap, and goes as a multiple ack up to 10.
        await batcher.ack(msgs[4])
        batcher.settled(msgs[4])
        await batcher.drain()
        assert acks[-1] == (5, True)  # its own tag: 6-10 are acked already
        await consumer.close()
        # Nothing came back when the consumer went away: every delivery was acked.
        assert await _ready_count(checker, name) == 0
    finally:
        await consumer.close()
        await _delete(checker, name)
        await checker.close()


async def test_a_multiple_ack_leaves_an_in_flight_delivery_to_be_redelivered(rabbitmq: str):
    consumer = await aio_pika.connect(rabbitmq)
    checker = await aio_pika.connect(rabbitmq)
    try:
        name = ""
        name, msgs, acks = await _deliveries(consumer, 6)
        batcher = AckBatcher()
        # 1 and 2 acked, 3 nacked by another path (requeued), 4 in flight, 5 and 6 acked.
        for m in msgs[:2]:
            await batcher.ack(m)
            batcher.settled(m)
        await msgs[2].nack(requeue=True)
        batcher.settled(msgs[2])
        for m in msgs[4:]:
            await batcher.ack(m)
            batcher.settled(m)
        await asyncio.sleep(0)  # the loop iteration's end: the scheduled flush runs
        await eventually(lambda: len(acks) >= 3, what="the flush")
        assert acks[0] == (2, True)
        assert sorted(acks[1:]) == [(5, False), (6, False)]
        await consumer.close()
        # Back in the queue: the nacked one and the one that was in flight, nothing else.
        assert await eventually(lambda: _ready_count(checker, name), what="requeue") == 2
    finally:
        await consumer.close()
        await _delete(checker, name)
        await checker.close()


async def test_flushes_never_overtake_each_other_on_a_busy_connection(rabbitmq: str):
    """Seen on a loaded machine (84 times in a morning's runs: RabbitMQ's log said
    "unknown delivery tag", the channel closed, 256 deliveries came back each time and a
    soak's deliveries fell to a trickle): a flush suspended between its frames (a full
    frame buffer) let the next flush send a `multiple` ack past a tag the first one still
    had to ack on its own; that single ack then named a tag already acked."""
    consumer = await aio_pika.connect(rabbitmq)
    checker = await aio_pika.connect(rabbitmq)
    try:
        name = ""
        name, msgs, acks = await _deliveries(consumer, 4, write_delay=0.02)
        channel = msgs[0].channel
        batcher = AckBatcher()
        # First flush: 1 (multiple, the run so far) and 3 (on its own: 2 is in flight).
        for m in (msgs[0], msgs[2]):
            await batcher.ack(m)
            batcher.settled(m)
        for _ in range(100):  # loop iterations, not time: the flush is scheduled soon
            if batcher._flushing and not any(s.pending for s in batcher._channels.values()):
                break  # it took 1 and 3 and is waiting to write
            await asyncio.sleep(0)
        else:
            raise AssertionError("the first flush did not start")
        # While it waits to write: 2 and 4 finish; their flush may ack 2-4 with one frame
        # only after the first flush has written its single ack of 3.
        for m in (msgs[1], msgs[3]):
            await batcher.ack(m)
            batcher.settled(m)
        while batcher._flushing:  # both flushes, to their end
            await asyncio.gather(*batcher._flushing, return_exceptions=True)
        await batcher.drain()
        covered = 0
        for tag, multiple in acks:
            assert tag > covered, f"ack of {tag} after a multiple ack up to {covered}: {acks}"
            covered = max(covered, tag) if multiple else covered
        # A round trip on the channel: it is still open (an unknown tag closes it).
        await channel.basic_qos(prefetch_count=10)
        assert not channel.is_closed
        await consumer.close()
        assert await _ready_count(checker, name) == 0  # all four acked, none came back
    finally:
        await consumer.close()
        await _delete(checker, name)
        await checker.close()


async def test_a_flush_stuck_on_a_dead_connection_holds_back_nothing(rabbitmq, monkeypatch):
    """A connection that dies with aiormq's frame buffer full leaves an ack's write waiting
    for ever (nothing reads that buffer again). Flushes are serialised per channel, so that
    must not stop the acks of the channel that replaced it after the reconnect, nor hang
    `drain()` (and with it `stop()`): the stuck channel's acks are dropped after
    ACK_WRITE_TIMEOUT (its deliveries come back from RabbitMQ), the others go at once."""
    from rabbitmesh.dispatch import acks as acks_module

    monkeypatch.setattr(acks_module, "ACK_WRITE_TIMEOUT", 0.5)
    consumer = await aio_pika.connect(rabbitmq)
    checker = await aio_pika.connect(rabbitmq)
    dead_name = name = ""
    try:
        dead_name, dead, _ = await _deliveries(consumer, 2)
        name, alive, acks = await _deliveries(consumer, 3)
        never = asyncio.Event()

        async def stuck(delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
            await never.wait()  # a put() into a full frame buffer nobody reads any more

        dead[0].channel.basic_ack = stuck  # type: ignore[method-assign]
        batcher = AckBatcher()
        for m in dead + alive:
            await batcher.ack(m)
            batcher.settled(m)
        # The live channel's acks go out while the dead one's write hangs.
        await eventually(lambda: acks == [(3, True)], timeout=5, what="the live channel's acks")
        assert not never.is_set()
        started = asyncio.get_running_loop().time()
        await batcher.drain()
        assert asyncio.get_running_loop().time() - started < 5, "drain() hung on the dead channel"
        await consumer.close()
        assert await _ready_count(checker, name) == 0  # all three acked
        assert await _ready_count(checker, dead_name) == 2  # never acked: back in the queue
    finally:
        await consumer.close()
        await _delete(checker, dead_name)
        await _delete(checker, name)
        await checker.close()
