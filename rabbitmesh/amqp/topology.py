"""Declaring and deleting the RabbitMQ objects the reconciler asks for.

Queues that deliver to a subscriber dead-letter (nack without requeue) into their own
`:dlq` queue, so a message we cannot hand on is caught by RabbitMQ, never dropped by us. A
classic queue's `:dlq` is declared when something needs it: with a dead-letter sink, or by
the worker just before it rejects a message (RabbitMQ drops what it dead-letters to a queue
that does not exist, so the worker never rejects before the `:dlq` is there).
Retries wait in shared delay queues, one per distinct delay: a fixed `x-message-ttl` keeps
expiry in FIFO order, and on expiry RabbitMQ dead-letters the message through the default
exchange with its own routing key, which is the name of the queue it came from.

With `queue_type="quorum"` (RABBITMESH_QUEUE_TYPE) every queue here is a quorum queue,
replicated across the RabbitMQ cluster. Delivery queues then also get a delivery limit (it
only ends redelivery loops of a message that crashes us: our retries go through delay queues
and never count against it) and at-least-once dead-lettering, so a message RabbitMQ moves to
the `:dlq` is kept until the `:dlq` confirmed it. Delay queues keep the default at-most-once
dead-lettering: at-least-once holds a message in its source queue until some target queue
accepts it, so a retry whose trigger was deleted meanwhile would be stuck in the shared
delay queue instead of being discarded.

Declarations go over a few channels ("lanes"), each name always over the same one: RabbitMQ
runs one channel's methods one at a time, and a queue.declare that creates a durable queue
holds its channel for milliseconds, so over a single channel the reconciles of a cold start
(issue 13: 5,000 Triggers) waited in line for each other, and RabbitMQ spent almost twice the
CPU on the same creations over one channel as over eight (docs/benchmarks.md, "Topology
lanes"). One name, one lane keeps what is done to one queue or exchange in the order asked.

Nothing here is declared `robust`: aio-pika's robust channel keeps every queue object a
robust declare returns (a new one per call, never dropped until the queue is deleted) to
re-declare it after a reconnect, so re-declaring on every reconcile grew memory without end
(issue 13). The control plane re-declares instead: it reconciles everything again after a
reconnect, and every RABBITMESH_RESYNC_INTERVAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustChannel

from rabbitmesh.amqp.names import Names

log = logging.getLogger("rabbitmesh.topology")

# Binding arguments starting with "x-" are ignored by headers exchanges: no x- prefix here.
DELAY_HEADER = "rabbitmesh-delay"

#: Deliveries of one message before a quorum queue dead-letters it by itself. Generous: only a
#: message that is requeued again and again (a crash loop, a reply never publishable) hits it.
QUORUM_DELIVERY_LIMIT = 1000

QueueType = Literal["classic", "quorum"]

#: Channels a Topology declares over (`Topology.open`). Reconciles run 8 at a time
#: (RABBITMESH_RECONCILE_CONCURRENCY's default): with as many lanes they rarely wait for each
#: other. Each is a process in RabbitMQ and a few KB here, once per RabbitMQ per worker process.
LANES = 8


class Topology:
    def __init__(
        self,
        channel: AbstractRobustChannel,
        names: Names,
        queue_type: QueueType = "classic",
        open_channel: Callable[[], Awaitable[AbstractChannel]] | None = None,
        lanes: Sequence[AbstractRobustChannel] = (),
    ) -> None:
        #: The infrastructure's channel, and the first lane.
        self.channel = channel
        self._lanes: tuple[AbstractRobustChannel, ...] = (channel, *lanes)
        #: Opens a short-lived channel (ensure_dead_letter_queue); None: use `channel`.
        self.open_channel = open_channel
        self.names = names
        self.queue_type = queue_type
        self._delays: set[int] = set()
        self._lock = asyncio.Lock()
        # Only a robust channel knows (and needs) `robust=False`; a plain one declares plainly.
        self._plain: dict[str, Any] = (
            {"robust": False} if isinstance(channel, AbstractRobustChannel) else {}
        )

    @classmethod
    async def open(
        cls,
        open_channel: Callable[[], Awaitable[AbstractRobustChannel]],
        names: Names,
        queue_type: QueueType = "classic",
        lanes: int = LANES,
    ) -> Topology:
        """A Topology over `lanes` channels `open_channel` opens (it also opens the short-lived
        ones of ensure_dead_letter_queue)."""
        channels = [await open_channel() for _ in range(max(1, lanes))]
        return cls(channels[0], names, queue_type, open_channel, channels[1:])

    def lane(self, name: str) -> AbstractRobustChannel:
        """The channel everything done to the queue or exchange `name` goes over."""
        return self._lanes[zlib.crc32(name.encode()) % len(self._lanes)]

    async def declare_infrastructure(self) -> None:
        await self.channel.declare_exchange(
            self.names.delay_exchange, aio_pika.ExchangeType.HEADERS, durable=True
        )
        await self.channel.declare_queue(
            self.names.parked_queue, durable=True, arguments=self.queue_arguments()
        )

    def queue_arguments(
        self,
        arguments: dict[str, Any] | None = None,
        delivery: bool = False,
        queue_type: QueueType | None = None,
    ) -> dict[str, Any]:
        """`arguments` plus what the queue type (RABBITMESH_QUEUE_TYPE unless given: a
        broker's RabbitmqBrokerConfig) adds; `delivery` for a queue whose consumer may reject
        messages into its dead-letter queue."""
        args = dict(arguments or {})
        if (queue_type or self.queue_type) == "quorum":
            args["x-queue-type"] = "quorum"
            if delivery:
                args["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
                # At-least-once dead-lettering requires reject-publish overflow; with no length
                # limit set, nothing is ever rejected because of it.
                args["x-dead-letter-strategy"] = "at-least-once"
                args["x-overflow"] = "reject-publish"
        return args

    async def declare_exchange(self, name: str, kind: aio_pika.ExchangeType) -> None:
        await self.lane(name).declare_exchange(name, kind, durable=True, **self._plain)

    async def declare_delivery_queue(
        self, queue: str, queue_type: QueueType | None = None, dead_letter_queue: bool = False
    ) -> None:
        """A subscriber's queue, whose rejected messages RabbitMQ moves to its `:dlq`.

        The `:dlq` is declared with it when something consumes it (`dead_letter_queue`: a
        dead-letter sink is configured) and always for a quorum queue (RabbitMQ dead-letters
        by itself there, at the delivery limit). Otherwise it is declared when first needed,
        by the worker about to reject a message into it (`declare_dead_letter_queue`): most
        Triggers never need one, and creating a durable queue is most of what RabbitMQ does
        for a new Trigger (issue 13: 5,000 Triggers made 10,000 queues at a cold start)."""
        if dead_letter_queue or (queue_type or self.queue_type) == "quorum":
            await self.declare_dead_letter_queue(queue, queue_type)
        await self.lane(queue).declare_queue(
            queue,
            durable=True,
            arguments=self.queue_arguments(
                {
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.names.dead_letter_queue(queue),
                },
                delivery=True,
                queue_type=queue_type,
            ),
            **self._plain,
        )

    async def declare_dead_letter_queue(
        self,
        queue: str,
        queue_type: QueueType | None = None,
        channel: AbstractChannel | None = None,
    ) -> None:
        """`queue`'s `:dlq` (on `channel`, default: its lane)."""
        dlq = self.names.dead_letter_queue(queue)
        target = channel or self.lane(dlq)
        plain: dict[str, Any] = (
            {"robust": False} if isinstance(target, AbstractRobustChannel) else {}
        )
        await target.declare_queue(
            dlq,
            durable=True,
            arguments=self.queue_arguments(queue_type=queue_type),
            **plain,
        )

    async def ensure_dead_letter_queue(self, queue: str) -> None:
        """Make sure `queue`'s `:dlq` exists (a worker about to reject into it): declared
        classic, on a channel of its own: a quorum queue's `:dlq` exists with other
        arguments, and RabbitMQ answers that with a channel error (PRECONDITION_FAILED),
        which says as well that it exists, and would fail whatever else the shared
        topology channel was doing."""
        if self.open_channel is None:
            await self.declare_dead_letter_queue(queue, "classic")
            return
        channel = await self.open_channel()
        try:
            await self.declare_dead_letter_queue(queue, "classic", channel)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            pass  # it exists, as another type: all that matters here
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def declare_partition_queue(self, queue: str, dead_letter_queue: str) -> None:
        """A partition of an ordered queue (docs/ordering.md): single active consumer, so
        however many replicas consume it only one delivers at a time; what it rejects goes to
        the parent queue's `:dlq`."""
        await self.lane(queue).declare_queue(
            queue,
            durable=True,
            arguments=self.queue_arguments(
                {
                    "x-single-active-consumer": True,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead_letter_queue,
                },
                delivery=True,
            ),
            **self._plain,
        )

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        q = await self.lane(queue).get_queue(queue, ensure=False)
        await q.bind(exchange, routing_key)

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        q = await self.lane(queue).get_queue(queue, ensure=False)
        await q.unbind(exchange, routing_key)

    async def ensure_delay_queue(self, delay_ms: int) -> None:
        """Declare (once per process) the delay queue for this many milliseconds."""
        if delay_ms in self._delays:
            return
        async with self._lock:
            if delay_ms in self._delays:
                return
            name = self.names.delay_queue(delay_ms)
            q = await self.channel.declare_queue(
                name,
                durable=True,
                arguments=self.queue_arguments(
                    {"x-message-ttl": delay_ms, "x-dead-letter-exchange": ""}
                ),
            )
            await q.bind(
                self.names.delay_exchange,
                "",
                arguments={"x-match": "all", DELAY_HEADER: str(delay_ms)},
            )
            self._delays.add(delay_ms)

    async def delete_queue(self, queue: str) -> None:
        await self.lane(queue).queue_delete(queue)

    async def delete_exchange(self, name: str) -> None:
        await self.lane(name).exchange_delete(name)
