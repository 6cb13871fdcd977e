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

    async def slow_loop() -> None:
        while not stop.is_set():
            time.sleep(0.005)  # noqa: ASYNC251 - blocking on purpose: every iteration >= 5 ms
            await asyncio.sleep(0)

    hog = asyncio.create_task(slow_loop())
    try:
        n = 200
        started = time.monotonic()
        await asyncio.gather(
            *(client.publish("", queue.name, aio_pika.Message(b"x")) for _ in range(n))
        )
        took = time.monotonic() - started
    finally:
        stop.set()
        await hog
    # Serialised, 200 publishes x 3 iterations x 5 ms would take at least 3 s.
    assert took < 1.5, f"{n} publishes took {took:.2f}s with 5 ms loop iterations"


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
        started = time.monotonic()
        with pytest.raises(Exception, match="blocking publishers"):
            await client.publish("", queue.name, aio_pika.Message(b"x"))
        assert time.monotonic() - started < 1  # at once, not after publish_timeout
    finally:
        unblocked.set()
    assert client.blocked is False
