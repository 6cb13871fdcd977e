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
    conn: aio_pika.abc.AbstractConnection, n: int
) -> tuple[str, list[AbstractIncomingMessage], list[tuple[int, bool]]]:
    """A fresh queue with `n` messages, all delivered (unacked) to one consumer; and the
    list the channel's basic.ack calls are recorded in (a spy on the real channel)."""
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
        acks.append((delivery_tag, multiple))
        return await real(delivery_tag, multiple=multiple, wait=wait)

    underlay.basic_ack = spy  # type: ignore[method-assign]
    return queue.name, got, acks


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
        await checker.close()


async def test_a_multiple_ack_leaves_an_in_flight_delivery_to_be_redelivered(rabbitmq: str):
    consumer = await aio_pika.connect(rabbitmq)
    checker = await aio_pika.connect(rabbitmq)
    try:
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
        await checker.close()
