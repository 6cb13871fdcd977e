"""Stream queues rabbitmesh keeps besides its delivery queues: archives and dead-letter stores.

A stream is read without removing anything: each reader picks a start (`first`, an offset, a
timestamp) and RabbitMQ hands out copies, each with its `x-stream-offset`. That is why
dead-letter listing (docs/delivery.md) and replay (docs/replay.md) use them: listing never
removes or reorders anything, and a replay can read the same window twice.

Declaring happens on a channel of its own: a stream that exists with other arguments (a
changed retention) makes RabbitMQ close the channel, which must not be the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from rabbitmesh.amqp.client import AmqpClient, PublishFailed

log = logging.getLogger("rabbitmesh.streams")

_T = TypeVar("_T")

#: A stream consumer needs a prefetch; acks only move the window on.
READ_PREFETCH = 500
#: A reader that waited this long for the next message gives up (RabbitMQ is away).
READ_IDLE_TIMEOUT = 5.0


#: On an end marker (see append_marker); readers skip every message that has it.
MARKER_HEADER = "x-rabbitmesh-marker"


class StreamReadTimeout(Exception):
    """A reader waited READ_IDLE_TIMEOUT for the next message (RabbitMQ away)."""


class StreamArgumentsDiffer(Exception):
    """The stream exists with other arguments; it is used as it is."""


def not_consumable_yet(exc: BaseException) -> bool:
    """RabbitMQ refused a consume on a stream that is still starting: 404 while a cluster
    forms (`stream_not_found`), or 406 "does not have a replica on the local node" when the
    stream was declared a moment ago and its local member is not running yet (3.10 answers
    the declare first). Both pass within a second or two; every other refusal is final."""
    if isinstance(exc, aio_pika.exceptions.ChannelNotFoundEntity):
        return True
    return isinstance(
        exc, aio_pika.exceptions.ChannelPreconditionFailed
    ) and "does not have a replica" in str(exc)


async def declare_stream(client: AmqpClient, name: str, arguments: dict[str, Any]) -> None:
    """Declare a durable stream and return once it takes writes (see wait_writable); raise
    StreamArgumentsDiffer if one exists with other arguments."""
    ch = await client.channel()
    try:
        await ch.declare_queue(
            name, durable=True, arguments={"x-queue-type": "stream", **arguments}
        )
    except aio_pika.exceptions.ChannelPreconditionFailed as e:
        raise StreamArgumentsDiffer(str(e)) from None
    finally:
        with contextlib.suppress(Exception):
            await ch.close()
    await wait_writable(client, name)


#: How long wait_writable tries before it gives up (RabbitMQ away, or the stream gone).
WRITABLE_TIMEOUT = 30.0


class StreamNotWritable(PublishFailed):
    """A stream just declared did not take a write within WRITABLE_TIMEOUT (a failed
    publish to its callers: transient, tried again later)."""


async def wait_writable(client: AmqpClient, name: str) -> str:
    """Return once `name`, a stream just declared, took a confirmed write: an end marker,
    whose id is returned.

    RabbitMQ 3.10 answers a stream's declare before the stream's writer runs. A publish in
    that moment crashes the publishing channel and, with it, its whole connection
    (`osiris_writer:write` function_clause, closed with INTERNAL_ERROR 541): on the shared
    publisher, that is every publish in flight. So the first write, an empty end marker every
    reader skips (and JobSink's run log, which ignores a body that is not a JSON object), goes
    over a short connection of its own, again until RabbitMQ confirms it.
    """

    async def write(conn: aio_pika.abc.AbstractConnection) -> str:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        marker_id = uuid.uuid4().hex
        marker = aio_pika.Message(
            b"",
            headers={MARKER_HEADER: marker_id},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await ch.default_exchange.publish(marker, routing_key=name, timeout=5)
        except aio_pika.exceptions.DeliveryError as e:  # returned: the stream is not there
            raise PublishFailed(f"stream {name} is gone: {e}") from e
        return marker_id

    try:
        return await _probe(client, name, "writable", write)
    except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as e:
        raise StreamNotWritable(f"stream {name} took no write in {WRITABLE_TIMEOUT}s: {e}") from e


async def wait_consumable(client: AmqpClient, name: str) -> None:
    """Return once a consumer can attach to `name`, a stream just declared.

    The same RabbitMQ 3.10 race as wait_writable, on the reading side: a `basic.consume` on a
    stream whose members are not registered yet crashes the channel with `stream_not_found`,
    and RabbitMQ closes the whole connection (INTERNAL_ERROR 541; seen when a rabbitmesh
    started on a new topology prefix and its store's consumer connection went down). So a
    throwaway consumer attaches first, over a short connection of its own.
    """

    async def consume(conn: aio_pika.abc.AbstractConnection) -> None:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=1)  # RabbitMQ refuses a stream consumer without one
        queue = await ch.get_queue(name, ensure=False)
        tag = await queue.consume(_ignore, arguments={"x-stream-offset": "next"})
        await queue.cancel(tag)

    # A start-up waiting here is worth a line (INFO): a stream that takes long is a sign.
    await _probe(client, name, "consumable", consume, level=logging.INFO)


async def _ignore(msg: AbstractIncomingMessage) -> None:
    """A probe's consumer: it reads from `next`, and nothing it might get matters."""


async def _probe(
    client: AmqpClient,
    name: str,
    what: str,
    attempt: Callable[[aio_pika.abc.AbstractConnection], Awaitable[_T]],
    level: int = logging.DEBUG,
) -> _T:
    """`attempt` over a short connection of its own, again (backing off) while RabbitMQ
    refuses it, for WRITABLE_TIMEOUT; the last error is raised after that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WRITABLE_TIMEOUT
    delay = 0.05
    while True:
        try:
            conn = await aio_pika.connect(
                client.url,
                ssl_context=client.ssl_context,
                timeout=5,
                client_properties={"connection_name": f"rabbitmesh-{client.name}-stream-probe"},
            )
            async with conn:
                return await attempt(conn)
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as e:
            if loop.time() + delay > deadline:
                raise
            log.log(level, "stream %s not %s yet (%s); trying again in %.2fs", name, what, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def delete_stream(client: AmqpClient, name: str) -> None:
    ch = await client.channel()
    try:
        await ch.queue_delete(name)
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


async def exists(client: AmqpClient, name: str) -> bool:
    ch = await client.channel()
    try:
        await ch.declare_queue(name, passive=True)
        return True
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


async def append_marker(client: AmqpClient, name: str) -> str:
    """Append an end marker (confirmed) and return its id. RabbitMQ offers no exact "last
    offset now" over AMQP (a stream's message count lags behind), so a reader that must read
    *everything up to now* appends a marker and reads until it comes by; readers skip them.

    Over a connection of its own (wait_writable), never the shared publisher: the stream may
    have been declared a moment ago by another process (a dead-letter store listed while its
    first dead letter is being kept), and a write in that moment would take down the
    connection that carries it."""
    return await wait_writable(client, name)


def is_marker(msg: AbstractIncomingMessage) -> bool:
    return MARKER_HEADER in (msg.headers or {})


async def read_stream(
    client: AmqpClient,
    name: str,
    start: str | int | datetime,
    until_marker: str,
    prefetch: int = READ_PREFETCH,
) -> AsyncIterator[tuple[int, AbstractIncomingMessage]]:
    """(offset, message) from `start`, in stream order, until the marker `until_marker`
    (not yielded; other markers are skipped).

    A timestamp start begins at the chunk that holds it: messages a little older may come
    first, and callers that need exact times check each message's own.
    """
    ch = await client.channel(prefetch=prefetch)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    try:
        q = await ch.get_queue(name, ensure=True)
        await q.consume(inbox.put, arguments={"x-stream-offset": start})
        seen = 0
        while True:
            try:
                msg = await asyncio.wait_for(inbox.get(), READ_IDLE_TIMEOUT)
            except TimeoutError:
                raise StreamReadTimeout(f"{name}: no message for {READ_IDLE_TIMEOUT}s") from None
            seen += 1
            if seen % max(prefetch // 2, 1) == 0:
                await msg.ack(multiple=True)
            headers = msg.headers or {}
            marker = headers.get(MARKER_HEADER)
            if marker is not None:
                if (marker.decode() if isinstance(marker, bytes) else marker) == until_marker:
                    return
                continue
            offset = headers.get("x-stream-offset")
            if isinstance(offset, int):
                yield offset, msg
    finally:
        with contextlib.suppress(Exception):
            await ch.close()
