"""AmqpClient against the real RabbitMQ: what the fault suite found (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

from rabbitmesh.amqp.client import _UNBLOCKED_ATTR, AmqpClient

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(rabbitmq: str):
    c = AmqpClient(rabbitmq, "test", publish_timeout=10)
    await asyncio.wait_for(c.connect(), 10)
    yield c
    await c.close()


async def test_publishes_are_pipelined_even_when_the_event_loop_is_slow(client):
    """Found by the subscriber-outage scenario: while a backlog drained, every loop iteration
    was long, and ingress publishes, each holding the channel until the socket drained (about
    three iterations per publish, one at a time), took over 10 s: 503s. Publishes now queue
    their frames without waiting for the drain and only wait for their own confirm."""
    ch = await client.channel()
    queue = await ch.declare_queue("", exclusive=True)
    stop = asyncio.Event()
    iterations = 0

    async def slow_loop() -> None:
        nonlocal iterations
        while not stop.is_set():
            time.sleep(0.005)  # noqa: ASYNC251 - blocking on purpose: every iteration >= 5 ms
            iterations += 1
            await asyncio.sleep(0)

    async def publishing(n: int) -> int:
        """Loop iterations that `n` concurrent publishes (and their confirms) take."""
        before = iterations
        await asyncio.gather(
            *(client.publish("", queue.name, aio_pika.Message(b"x")) for _ in range(n))
        )
        return iterations - before

    hog = asyncio.create_task(slow_loop())
    try:
        # Counted in loop iterations, not seconds: a loaded machine makes each one longer, not
        # more numerous. The baseline, measured here: one publish and its confirm round trip
        # (more iterations when RabbitMQ is slow to confirm).
        one = sorted([await publishing(1) for _ in range(5)])[2]
        n = 200
        took = await publishing(n)
    finally:
        stop.set()
        await hog
    # Serialised, each publish held the channel for about 3 iterations: 3 x n. Pipelined,
    # about one each, plus the confirm round trip.
    assert took < 2 * n + 3 * one, f"{n} publishes took {took} loop iterations; one {one}"


async def test_blocked_reads_aiormq_state(client):
    """`blocked` reads a private aiormq field: fail here, not silently, if it ever moves."""
    assert client.connection is not None and client.connection.transport is not None
    unblocked = getattr(client.connection.transport.connection, _UNBLOCKED_ATTR)
    assert isinstance(unblocked, asyncio.Event)
    assert client.blocked is False
    ch = await client.channel()
    queue = await ch.declare_queue("", exclusive=True)
    unblocked.clear()  # what aiormq does on connection.blocked
    try:
        assert client.blocked is True
        # At once, not after publish_timeout (10 s): the publish is refused without sending.
        async with asyncio.timeout(client.publish_timeout / 2):
            with pytest.raises(Exception, match="blocking publishers"):
                await client.publish("", queue.name, aio_pika.Message(b"x"))
    finally:
        unblocked.set()
    assert client.blocked is False
