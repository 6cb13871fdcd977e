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
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from rabbitmesh.amqp.client import AmqpClient

log = logging.getLogger("rabbitmesh.streams")

#: A stream consumer needs a prefetch; acks only move the window on.
READ_PREFETCH = 500
#: A reader that waited this long for the next message of a snapshot gives up (the stream's
#: head was cut by retention meanwhile, so the last offset will never come).
READ_IDLE_TIMEOUT = 5.0


class StreamArgumentsDiffer(Exception):
    """The stream exists with other arguments; it is used as it is."""


async def declare_stream(client: AmqpClient, name: str, arguments: dict[str, Any]) -> None:
    """Declare a durable stream; raise StreamArgumentsDiffer if one exists with others."""
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


async def delete_stream(client: AmqpClient, name: str) -> None:
    ch = await client.channel()
    try:
        await ch.queue_delete(name)
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


async def stream_length(client: AmqpClient, name: str) -> int | None:
    """How many messages the stream holds now; None when it does not exist."""
    ch = await client.channel()
    try:
        q = await ch.declare_queue(name, passive=True)
        return int(q.declaration_result.message_count or 0)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


async def read_stream(
    client: AmqpClient,
    name: str,
    start: str | int | datetime = "first",
    *,
    end_offset: int | None = None,
) -> AsyncIterator[AbstractIncomingMessage]:
    """The stream's messages from `start`, in order, up to and including `end_offset`; with
    no `end_offset`, up to what the stream held when reading began (a snapshot).

    A timestamp start begins at the chunk that holds it: messages a little older may come
    first, and callers that need exact times check each message's own.
    """
    if end_offset is None:
        end_offset = await last_offset(client, name)
        if end_offset is None:
            return
    ch = await client.channel(prefetch=READ_PREFETCH)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    try:
        q = await ch.get_queue(name, ensure=True)
        await q.consume(inbox.put, arguments={"x-stream-offset": start})
        seen = 0
        while True:
            try:
                msg = await asyncio.wait_for(inbox.get(), READ_IDLE_TIMEOUT)
            except TimeoutError:
                return
            offset = (msg.headers or {}).get("x-stream-offset")
            seen += 1
            if seen % (READ_PREFETCH // 2) == 0:
                await msg.ack(multiple=True)
            if not isinstance(offset, int):
                continue
            if offset > end_offset:
                return
            yield msg
            if offset >= end_offset:
                return
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


async def last_offset(client: AmqpClient, name: str) -> int | None:
    """The offset of the stream's newest message now; None when it is empty."""
    ch = await client.channel(prefetch=1)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    try:
        q = await ch.declare_queue(name, passive=True)
        count = int(q.declaration_result.message_count or 0)
        if count == 0:
            return None
        await q.consume(inbox.put, arguments={"x-stream-offset": "first"})
        try:
            msg = await asyncio.wait_for(inbox.get(), READ_IDLE_TIMEOUT)
        except TimeoutError:
            return None
        first = (msg.headers or {}).get("x-stream-offset")
        return first + count - 1 if isinstance(first, int) else None
    finally:
        with contextlib.suppress(Exception):
            await ch.close()
