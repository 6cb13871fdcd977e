"""Streams rabbitmesh keeps (archives, dead-letter stores, JobSink run logs): a stream is only
handed to the shared publisher once it takes writes (rabbitmesh/amqp/streams.py)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.streams import (
    append_marker,
    declare_stream,
    is_marker,
    read_stream,
    wait_consumable,
)
from tests.support.mesh import AMQP_URL

pytestmark = pytest.mark.integration


async def _watched_client(name: str) -> tuple[AmqpClient, list[object]]:
    """A connected client, and the list its connection's closings are recorded in: a stream
    race that kills the shared connection shows there."""
    client = AmqpClient(AMQP_URL, name)
    await client.connect()
    closed: list[object] = []
    assert client.connection is not None
    client.connection.close_callbacks.add(lambda *args: closed.append(args))
    return client, closed


async def test_declare_returns_once_the_stream_took_a_write_that_readers_skip(prefix):
    """RabbitMQ 3.10 answers a stream's declare before its writer runs, and a publish in that
    moment kills the publishing connection (INTERNAL_ERROR): declare_stream returns only after
    a write was confirmed, over a connection of its own; readers never see that write."""
    client, closed = await _watched_client("test-streams")
    try:
        names = [f"{prefix}.stream.{i}" for i in range(5)]
        for name in names:
            await declare_stream(client, name, {"x-max-age": "60s"})
            # The very next publish goes over the shared connection, at once.
            await client.publish("", name, aio_pika.Message(b"event"), mandatory=True)

        ch = await client.channel(prefetch=10)
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        queue = await ch.get_queue(names[0])
        await queue.consume(inbox.put, arguments={"x-stream-offset": "first"})
        first = await asyncio.wait_for(inbox.get(), 10)
        second = await asyncio.wait_for(inbox.get(), 10)
        assert is_marker(first) and first.body == b""
        assert not is_marker(second) and second.body == b"event"

        until = await append_marker(client, names[0])
        read = [msg.body async for _, msg in read_stream(client, names[0], "first", until)]
        assert read == [b"event"]
        assert closed == [] and client.connected
    finally:
        await client.close()


async def test_a_marker_on_a_stream_another_process_just_declared_spares_the_shared_publisher(
    prefix,
):
    """A dead-letter store listed while another process keeps its first dead letter: the
    listing's end marker may meet the stream before its writer runs. It goes over a
    connection of its own, so the shared publisher (every publish in flight) never dies."""
    other = await aio_pika.connect(AMQP_URL)
    client, closed = await _watched_client("test-streams-markers")
    try:
        ch = await other.channel()
        for i in range(20):
            name = f"{prefix}.raced.{i}"
            # "Another process": a bare declare, no wait for the writer.
            await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "stream"})
            marker = await append_marker(client, name)
            assert marker
            await client.publish("", name, aio_pika.Message(b"after"), mandatory=True)
        assert closed == [] and client.connected
    finally:
        await client.close()
        await other.close()


async def test_a_consumer_on_a_stream_just_declared_spares_the_shared_connection(prefix):
    """The resource store attaches its consumer right after declaring its stream. RabbitMQ 3.10
    may not have registered the stream's members yet; a `basic.consume` then crashes with
    `stream_not_found` and RabbitMQ closes the whole consumer connection (a rabbitmesh exited at
    start-up on it in a full run). wait_consumable attaches a throwaway consumer over a
    connection of its own first; the shared connection's consume then always succeeds.

    The race needs a loaded machine: 20 declare-then-consume rounds (or 40 at once) on this
    quiet one did not hit it without the probe. What this test holds is the probe itself: it
    returns for a stream declared a moment ago by another connection, and leaves the shared
    connection alone."""
    other = await aio_pika.connect(AMQP_URL)
    client, closed = await _watched_client("test-streams-consumers")
    try:
        declaring = await other.channel()
        for i in range(20):
            name = f"{prefix}.fresh.{i}"
            await declaring.declare_queue(name, durable=True, arguments={"x-queue-type": "stream"})
            await wait_consumable(client, name)
            ch = await client.channel(prefetch=10)
            queue = await ch.get_queue(name)
            tag = await queue.consume(_discard, arguments={"x-stream-offset": "first"})
            await queue.cancel(tag)
            await ch.close()
        assert closed == [] and client.connected
    finally:
        await client.close()
        await other.close()


async def _discard(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
    """Nothing is published to these streams; a consumer needs a callback all the same."""
