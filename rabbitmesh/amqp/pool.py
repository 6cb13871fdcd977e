"""Channels for queue consumers, spread over as many connections as they need.

Queue workers (a trigger's, a subscription's, each one's dead-letter queue) consume on
channels they share, RABBITMESH_CONSUMERS_PER_CHANNEL workers each (`lease`). A channel is
the one costly thing a worker would otherwise hold alone: ~22 KB in each worker process
(aio-pika's and aiormq's per-channel queues, events and reader task) and a process in
RabbitMQ, so 5,000 triggers with a channel each needed ~110 MiB per process just for
channels (issue 13, docs/benchmarks.md). What a worker relies on stays its own on a shared
channel:

- **prefetch**: channels are shared only by workers with the same prefetch, and RabbitMQ
  applies a `basic.qos` without `global` to each consumer on the channel separately;
- **order**: one consumer per queue, delivering in queue order; concurrency 1 stays FIFO;
- **acks**: delivery tags are per channel, so `multiple` acks go through one AckBatcher per
  channel that knows every worker's deliveries on it (dispatch/acks.py);
- **shutdown**: a stopping worker cancels its consumer and nacks what it holds one by one
  instead of closing the channel (dispatch/worker.py), and leaves the channel's restore list,
  so a reconnect never re-declares a queue deleted since; the channel closes with its last
  worker.

What is shared is a channel error: RabbitMQ closes a channel on a `queue.declare`/`consume`
of a queue that is missing (a race with another replica deleting it). aio-pika reopens the
channel and its workers consume again; their unacknowledged deliveries come back (at least
once, as after a reconnect). A queue deleted while the connection was down is not one: the
restore leaves it out and its worker consumes again once it is back (amqp/channels.py,
`TidyRobustChannel._restore_queues`), where aio-pika failed the whole connection's restore,
again and again for as long as the queue stayed away.

RabbitMQ allows 2,047 channels per connection by default (`channel_max`); the pool opens
another connection once each open one hosts RABBITMESH_CHANNELS_PER_CONNECTION channels. The
resource store's reader keeps the `consumer` connection to itself: a worker's channel trouble
(aio-pika closes the whole connection on some of them) never interrupts the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import weakref
from collections.abc import Callable

from aio_pika.abc import AbstractRobustChannel

from rabbitmesh.amqp.client import AmqpClient

#: A full connection's channels are walked for closed ones at most once per this many
#: channels asked for (see ConsumerPool._open).
PRUNE_EVERY = 64


@dataclasses.dataclass(eq=False)
class _Shared:
    """One channel that queue workers with the same prefetch share."""

    prefetch: int | None
    opened: asyncio.Future[AbstractRobustChannel]
    users: int = 0


class ConsumerPool:
    """Hands out consumer channels: shared ones (`lease`, `release`) to queue workers, and
    channels of their own (`channel(prefetch)`, as AmqpClient does) to the rest."""

    def __init__(
        self,
        make: Callable[[int], AmqpClient],
        per_connection: int,
        consumers_per_channel: int = 1,
    ) -> None:
        """`make(i)` builds the i-th connection (connected here, when first needed)."""
        self.per_connection = per_connection
        self.consumers_per_channel = consumers_per_channel
        self._shared: dict[int | None, list[_Shared]] = {}  # by prefetch, in opening order
        self._lease_of: dict[int, _Shared] = {}  # id(channel) -> its _Shared
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

    async def lease(self, prefetch: int | None) -> AbstractRobustChannel:
        """A channel to consume on, shared with at most `consumers_per_channel - 1` other
        workers of the same prefetch; give it back with `release`."""
        if self.consumers_per_channel <= 1:
            return await self.channel(prefetch)
        shared = self._shared.setdefault(prefetch, [])
        # Choosing and counting happen without an await in between: no lock, and workers
        # that start together wait for one channel to open rather than each opening one.
        slot = next(
            (
                s
                for s in shared
                if s.users < self.consumers_per_channel
                and not (s.opened.done() and _unusable(s.opened))
            ),
            None,
        )
        if slot is None:
            slot = _Shared(prefetch, asyncio.get_running_loop().create_future())
            shared.append(slot)
            slot.users += 1
            try:
                ch = await self.channel(prefetch)
            except BaseException as e:
                shared.remove(slot)
                slot.opened.set_exception(e if isinstance(e, Exception) else ConnectionError())
                slot.opened.exception()  # retrieved: the waiters see it too
                raise
            self._lease_of[id(ch)] = slot
            slot.opened.set_result(ch)
            return ch
        slot.users += 1
        try:
            return await asyncio.shield(slot.opened)
        except BaseException:
            slot.users -= 1
            raise

    async def release(self, channel: AbstractRobustChannel) -> None:
        """A worker is done with `channel` (its consumer cancelled, its deliveries settled);
        the last one out closes it."""
        slot = self._lease_of.get(id(channel))
        if slot is None:  # a channel of its own
            with contextlib.suppress(Exception):
                await channel.close()
            return
        slot.users -= 1
        if slot.users > 0:
            return
        del self._lease_of[id(channel)]
        with contextlib.suppress(ValueError):
            self._shared[slot.prefetch].remove(slot)
        with contextlib.suppress(Exception):
            await channel.close()

    def shared_counts(self) -> list[int]:
        """Workers per shared channel (for tests)."""
        return [s.users for slots in self._shared.values() for s in slots]

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.clients)

    def counts(self) -> list[int]:
        """Open channels per connection (for logs and tests)."""
        return [self._open(c, exact=True) for c in self.clients]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


def _unusable(opened: asyncio.Future[AbstractRobustChannel]) -> bool:
    """An opened channel closed for good (by us, or its restore failed): lease no more of it."""
    return opened.exception() is not None or opened.result().is_closed
