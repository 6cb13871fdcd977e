"""Channels for queue consumers, spread over as many connections as they need.

Every queue worker (a trigger's, a subscription's, each one's dead-letter queue) has a
channel of its own: its prefetch, its ordering (concurrency 1 is FIFO) and its shutdown
(cancel, finish, nack the rest, close) stay exactly what they are with one worker per
channel, and a channel error (a queue deleted under it) closes one worker, not its
neighbours. RabbitMQ allows 2,047 channels per connection by default (`channel_max`), so one
connection would stop at about a thousand triggers; the pool opens another connection once
each open one hosts RABBITMESH_CHANNELS_PER_CONNECTION channels.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from aio_pika.abc import AbstractRobustChannel

from rabbitmesh.amqp.client import AmqpClient


class ConsumerPool:
    """Hands out consumer channels: `channel(prefetch)`, as AmqpClient does."""

    def __init__(
        self,
        first: AmqpClient,
        make: Callable[[int], AmqpClient],
        per_connection: int,
    ) -> None:
        """`first` is connected by its owner; `make(i)` builds the i-th extra connection."""
        self.per_connection = per_connection
        self._make = make
        self.clients: list[AmqpClient] = [first]
        self._extra: list[AmqpClient] = []
        self._channels: dict[int, weakref.WeakSet[AbstractRobustChannel]] = {}
        self._lock = asyncio.Lock()

    def _open(self, client: AmqpClient) -> int:
        channels = self._channels.setdefault(id(client), weakref.WeakSet())
        return sum(1 for ch in channels if not ch.is_closed)

    async def channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        async with self._lock:  # so two workers starting at once do not both open a connection
            client = next((c for c in self.clients if self._open(c) < self.per_connection), None)
            if client is None:
                client = self._make(len(self.clients))
                await client.connect()
                self.clients.append(client)
                self._extra.append(client)
            ch = await client.channel(prefetch=prefetch)
            self._channels.setdefault(id(client), weakref.WeakSet()).add(ch)
            return ch

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.clients)

    def counts(self) -> list[int]:
        """Open channels per connection (for logs and tests)."""
        return [self._open(c) for c in self.clients]

    async def close(self) -> None:
        """Close the connections the pool opened (the first one is its owner's)."""
        await asyncio.gather(*(c.close() for c in self._extra), return_exceptions=True)
