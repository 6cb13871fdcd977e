"""AmqpClient against the real RabbitMQ: what the fault suite found (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid

import aio_pika
import pytest

from rabbitmesh.amqp.channels import CloseHandlers
from rabbitmesh.amqp.client import _UNBLOCKED_ATTR, AmqpClient, PublishFailed
from tests.support.waiting import eventually

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


async def test_timed_out_publishes_whose_message_comes_back_keep_the_channel(rabbitmq: str):
    """Found by the anonymous batch attack (4 x 1000-event batches nobody routes): a publish
    timed out while RabbitMQ was returning its unroutable message. The timeout cancelled
    aiormq's confirm future; the return then called set_exception on it: InvalidStateError
    killed the channel's reader, aiormq sent Channel.Close twice (RabbitMQ closed the whole
    connection: "expected 'channel.open'") and the connection's reader hung on the dead
    channel's frame queue, so nobody noticed and every later publish waited 10 s: 503s.

    The trigger: aiormq matches a return to its publish by message id, which is the event id
    the sender chose; concurrent batches numbered from 0 had several publishes with one id in
    flight. Many mandatory publishes to nowhere with repeating ids, each with a deadline
    around the return's round trip, must leave the publisher working and the channel open."""
    c = AmqpClient(rabbitmq, "test-returns", publish_timeout=10)
    await asyncio.wait_for(c.connect(), 10)
    try:
        ch = await c.channel()
        body = b"x" * 4000
        stop = asyncio.Event()

        async def slow_loop() -> None:
            # Long iterations put many timeouts and returns into one iteration, as a loaded
            # ingress does; the race needs a timeout and a return in the same one.
            while not stop.is_set():
                time.sleep(0.002)  # noqa: ASYNC251 - blocking on purpose
                await asyncio.sleep(0)

        async def one(event_id: str, deadline: float) -> None:
            try:
                async with asyncio.timeout(deadline):
                    await c.publish(
                        "amq.direct",
                        "nobody-binds-this",
                        _msg(body, event_id),
                        mandatory=True,
                        unroutable_ok=True,
                    )
            except (PublishFailed, TimeoutError):
                pass

        hog = asyncio.create_task(slow_loop())
        try:
            for _ in range(10):
                # Event ids repeat, as in concurrent batches of a sender numbering from 0.
                await asyncio.gather(
                    *(one(str(i % 50), random.uniform(0, 0.05)) for i in range(400))
                )
                if not c.connected:
                    break
        finally:
            stop.set()
            await hog
        c.publish_timeout = 10
        assert c.connected
        # The channel still confirms: a routable publish goes through within the deadline.
        queue = await ch.declare_queue("", exclusive=True)
        async with asyncio.timeout(15):
            assert await c.publish("", queue.name, _msg(b"after"))
        assert c.connected
    finally:
        await c.close()


def _msg(body: bytes, message_id: str | None = None) -> aio_pika.Message:
    return aio_pika.Message(body, message_id=message_id or uuid.uuid4().hex)


async def test_publish_channel_dying_on_the_client_side_is_noticed_and_replaced(rabbitmq: str):
    """When aiormq's channel reader died (the batch attack), the channel closed on the client
    side only: aio-pika never reopened it, `connected` stayed True (/readyz "ready") and every
    publish waited for its timeout. Now readiness drops at once and the watchdog resets the
    connection, so publishing works again by itself."""
    c = AmqpClient(rabbitmq, "test-watchdog", publish_timeout=5)
    await asyncio.wait_for(c.connect(), 10)
    try:
        ch = await c.channel()
        queue = await ch.declare_queue("", exclusive=True)
        assert await c.publish("", queue.name, _msg(b"before"))
        assert c._publish_channel is not None
        underlay = await c._publish_channel.get_underlay_channel()
        # What the failing reader amounted to: the channel's reader task gone.
        underlay._Channel__reader_task.cancel()  # type: ignore[attr-defined]
        await eventually(lambda: not c.connected, timeout=5, what="the dead channel noticed")
        # Recovered by itself: a publish is confirmed again (a fresh exclusive queue, as the
        # old one went with the old connection).
        await eventually(lambda: c.connected, timeout=60, what="the publisher reconnected")
        async with asyncio.timeout(60):
            ch2 = await c.channel()
            q2 = await ch2.declare_queue("", exclusive=True)
            assert await c.publish("", q2.name, _msg(b"after"))
    finally:
        await c.close()


async def test_a_closed_channel_leaves_nothing_on_its_connection(client):
    """aio-pika left two observers of the connection's `closing` per channel closed, one
    holding the channel's close handler, until the connection closed: ~1.4 KiB per Trigger
    deleted (issue 13, rabbitmesh/amqp/channels.py). Open channels now hold nothing there
    either (one observer per connection holds all their close handlers), and a closed one
    leaves nothing, in whatever order they close, with others still open."""
    assert client.connection is not None
    closing = client.connection.transport.connection._closing

    def pending() -> int:
        return len(closing._callbacks or ())

    before = pending()  # the client's publish channel is open: its connection's one observer
    channels = [await client.channel(prefetch=5) for _ in range(8)]
    assert pending() == before  # was before + 8: one observer per open channel
    for ch in channels[::2] + channels[1::2]:
        await ch.close()
    async with await client.channel() as ch:  # closed by the context manager
        await ch.declare_queue("", exclusive=True)
    channel = await client.channel()
    assert pending() == before
    handlers = CloseHandlers.of(client.connection.transport.connection)
    assert len(handlers.handlers) == 2  # the publish channel's and `channel`'s
    queue = await channel.declare_queue("", exclusive=True)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    assert await eventually(lambda: queue.get(fail=False), what="the message") is not None
    await channel.close()


async def test_a_channel_rabbitmq_closed_leaves_nothing_on_its_connection(client):
    """A channel error (here a passive declare of a missing queue, as streams.exists and a
    RabbitmqSink's missing-exchange check do) makes RabbitMQ close the channel; aio-pika
    reopens it with a new underlay, and the old one's observer of the connection's `closing`
    stayed pending (its close handler spent) until an older channel of the connection
    closed: never, for one older than the client's own publish channel. Now it is forgotten
    once its handler finished: 20 such channels leave the count where it was (was: +20)."""
    assert client.connection is not None
    closing = client.connection.transport.connection._closing

    def pending() -> int:
        return len(closing._callbacks or ())

    before = pending()
    for _ in range(20):
        ch = await client.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await ch.declare_queue(f"missing-{uuid.uuid4().hex}", passive=True)
        # reopened by aio-pika: usable again
        await eventually(lambda ch=ch: not ch.is_closed, what="the channel reopened")
        queue = await ch.declare_queue("", exclusive=True)
        await queue.delete()
        await ch.close()
    assert await eventually(lambda: pending() == before, what="observers forgotten")
    handlers = CloseHandlers.of(client.connection.transport.connection)
    assert len(handlers.handlers) == 1  # the publish channel's


async def _calls_to_close(channel) -> int:
    """Closes `channel`, counting the Python function calls made meanwhile (the work)."""
    calls = 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        await channel.close()
    finally:
        sys.setprofile(None)
    return calls


async def test_closing_a_channel_costs_the_same_however_many_are_open(client):
    """A stop of ~4,700 Triggers took two minutes, most of its CPU in the first fix of the
    leak above: each close walked the connection's observers from the newest back to its
    own, so closing the oldest of n open channels took O(n) (O(n²) for a stop; issue 13).
    Counted as work, not time: the Python calls of closing the oldest channel with 20 open
    and with 400 open, and the callbacks on the connection's `closing` with 400 open. On the
    old code: ~1,200 more calls at 400, and 400 more callbacks."""
    assert client.connection is not None
    closing = client.connection.transport.connection._closing

    def pending() -> int:
        return len(closing._callbacks or ())

    before = pending()
    channels = [await client.channel(prefetch=5) for _ in range(20)]
    few = await _calls_to_close(channels.pop(0))
    channels += [await client.channel(prefetch=5) for _ in range(400 - len(channels))]
    assert pending() == before
    many = await _calls_to_close(channels.pop(0))
    assert many < few + 100, (few, many)
    for ch in channels:
        await ch.close()
    assert pending() == before
    handlers = CloseHandlers.of(client.connection.transport.connection)
    assert len(handlers.handlers) == 1  # the publish channel's
