"""Channels for queue consumers, spread over as many connections as they need.

Every queue worker (a trigger's, a subscription's, each one's dead-letter queue) has a
channel of its own: its prefetch, its ordering (concurrency 1 is FIFO) and its shutdown
(cancel, finish, nack the rest, close) stay exactly what they are with one worker per
channel, and a channel error (a queue deleted under it) closes one worker, not its
neighbours. RabbitMQ allows 2,047 channels per connection by default (`channel_max`), so one
connection would stop at about a thousand triggers; the pool opens another connection once
each open one hosts RABBITMESH_CHANNELS_PER_CONNECTION channels. The resource store's reader
keeps the `consumer` connection to itself: a worker's channel trouble (aio-pika closes the
whole connection on some of them) never interrupts the control plane.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from aio_pika.abc import AbstractRobustChannel

from rabbitmesh.amqp.client import AmqpClient

#: A full connection's channels are walked for closed ones at most once per this many
#: channels asked for (see ConsumerPool._open).
PRUNE_EVERY = 64


class ConsumerPool:
    """Hands out consumer channels: `channel(prefetch)`, as AmqpClient does."""

    def __init__(self, make: Callable[[int], AmqpClient], per_connection: int) -> None:
        """`make(i)` builds the i-th connection (connected here, when first needed)."""
        self.per_connection = per_connection
        self._make = make
        self.clients: list[AmqpClient] = []
        self._channels: dict[int, weakref.WeakSet[AbstractRobustChannel]] = {}
        self._opening: dict[int, int] = {}  # channels being opened, per connection
        self._asked = 0  # channels asked for so far
        self._pruned: dict[int, int] = {}  # connection -> `_asked` when last walked
        self._lock = asyncio.Lock()

    def _open(self, client: AmqpClient, exact: bool = False) -> int:
        # A stopped worker's closed channel leaves the weak set when it is collected; count
        # the closed ones out only when it matters (the connection looks full), and then at
        # most once every PRUNE_EVERY channels asked for: a full connection was walked on
        # every call, and with 5,000 triggers (ten full connections) that walk was a fifth of
        # a cold start's CPU (issue 13). Until the next walk, a full connection's closed
        # channels only make the next channel go to another connection.
        channels = self._channels.setdefault(id(client), weakref.WeakSet())
        opening = self._opening.get(id(client), 0)
        if exact or (
            len(channels) + opening >= self.per_connection
            and self._asked - self._pruned.get(id(client), -PRUNE_EVERY) >= PRUNE_EVERY
        ):
            self._pruned[id(client)] = self._asked
            for ch in [ch for ch in channels if ch.is_closed]:
                channels.discard(ch)
        return len(channels) + opening

    async def channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        # Only choosing (and, when all are full, opening) a connection is serialised, so two
        # workers starting at once never both open one; the channels open concurrently.
        async with self._lock:
            self._asked += 1
            client = next((c for c in self.clients if self._open(c) < self.per_connection), None)
            if client is None:
                client = self._make(len(self.clients))
                await client.connect()
                self.clients.append(client)
            self._opening[id(client)] = self._opening.get(id(client), 0) + 1
        try:
            ch = await client.channel(prefetch=prefetch)
            self._channels.setdefault(id(client), weakref.WeakSet()).add(ch)
            return ch
        finally:
            self._opening[id(client)] -= 1

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.clients)

    def counts(self) -> list[int]:
        """Open channels per connection (for logs and tests)."""
        return [self._open(c, exact=True) for c in self.clients]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
