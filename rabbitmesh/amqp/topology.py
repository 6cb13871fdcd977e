"""Declaring and deleting the RabbitMQ objects the reconciler asks for.

Queues that deliver to a subscriber dead-letter (nack without requeue) into their own
`.dlq` queue, so a message we cannot hand on is caught by RabbitMQ, never dropped by us.
Retries wait in shared delay queues, one per distinct delay: a fixed `x-message-ttl` keeps
expiry in FIFO order, and on expiry RabbitMQ dead-letters the message through the default
exchange with its own routing key, which is the name of the queue it came from.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractRobustChannel

from rabbitmesh.amqp.names import Names

log = logging.getLogger("rabbitmesh.topology")

# Binding arguments starting with "x-" are ignored by headers exchanges: no x- prefix here.
DELAY_HEADER = "rabbitmesh-delay"


class Topology:
    def __init__(self, channel: AbstractRobustChannel, names: Names) -> None:
        self.channel = channel
        self.names = names
        self._delays: set[int] = set()
        self._lock = asyncio.Lock()

    async def declare_infrastructure(self) -> None:
        await self.channel.declare_exchange(
            self.names.delay_exchange, aio_pika.ExchangeType.HEADERS, durable=True
        )
        await self.channel.declare_queue(self.names.parked_queue, durable=True)

    async def declare_exchange(self, name: str, kind: aio_pika.ExchangeType) -> None:
        await self.channel.declare_exchange(name, kind, durable=True)

    async def declare_delivery_queue(self, queue: str) -> None:
        """A subscriber's queue and the dead-letter queue RabbitMQ moves rejected messages to."""
        dlq = self.names.dead_letter_queue(queue)
        await self.channel.declare_queue(dlq, durable=True)
        await self.channel.declare_queue(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
        )

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        q = await self.channel.get_queue(queue, ensure=False)
        await q.bind(exchange, routing_key)

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        q = await self.channel.get_queue(queue, ensure=False)
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
                arguments={"x-message-ttl": delay_ms, "x-dead-letter-exchange": ""},
            )
            await q.bind(
                self.names.delay_exchange,
                "",
                arguments={"x-match": "all", DELAY_HEADER: str(delay_ms)},
            )
            self._delays.add(delay_ms)

    async def delete_queue(self, queue: str) -> None:
        await self.channel.queue_delete(queue)

    async def delete_exchange(self, name: str) -> None:
        await self.channel.exchange_delete(name)
