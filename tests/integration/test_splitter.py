"""The ordered trigger's splitter (dispatch/ordered.py) against the real RabbitMQ: what it hands
back when a publish fails or the process dies mid-batch, and that order and no-loss hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from rabbitmesh.amqp.client import AmqpClient, PublishFailed
from rabbitmesh.dispatch import ordered
from rabbitmesh.dispatch.ordered import Splitter, partition_of
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
    consumer = AmqpClient(rabbitmq, "splitter-test-con")
    await publisher.connect()
    await consumer.connect()
    splitter = Splitter(queue=entry, partitions=parts, consumer=consumer, publisher=publisher)
    await splitter.start()
    try:
        await asyncio.wait_for(publisher.hung.wait(), 30)
        # The process dies: its connections go, RabbitMQ takes back what was not acked.
        assert consumer.connection is not None
        await consumer.connection.close()
        await eventually(
            lambda: _depth(rabbitmq, entry), timeout=20, what="unacked messages back in queue"
        )
        assert await _drain(rabbitmq, parts[0]) == [f"e{i}" for i in range(5)]
        assert await _drain(rabbitmq, entry) == [f"e{i}" for i in range(5, 10)]
    finally:
        if splitter._task is not None:
            splitter._task.cancel()
            with contextlib.suppress(BaseException):
                await splitter._task
        await publisher.close()
        await consumer.close()


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
    consumer = AmqpClient(rabbitmq, "splitter-test-con")
    await publisher.connect()
    await consumer.connect()
    splitter = Splitter(queue=entry, partitions=parts, consumer=consumer, publisher=publisher)
    await splitter.start()
    try:
        await eventually(lambda: splitter.moved == 12, timeout=30, what="all 12 moved")
        assert publisher.calls == 13  # twelve copies and the one that failed
    finally:
        await splitter.stop(timeout=5)
        await publisher.close()
        await consumer.close()
    assert await _drain(rabbitmq, parts[0]) == [e for e, k in events if k == key0]
    assert await _drain(rabbitmq, parts[1]) == [e for e, k in events if k == key1]
    assert await _depth(rabbitmq, entry) == 0
