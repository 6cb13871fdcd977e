"""Stand-ins for RabbitMQ in fast unit tests of the data plane (as dramatiq tests its retries
with a stub broker): a publisher that records each publish and fails on demand, the delay
queues, and a message taken from a queue that records how it was answered. The integration
tests run the same code against a real RabbitMQ."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pamqp.commands import Basic

from rabbitmesh.amqp.client import MessageLike, PublishFailed
from rabbitmesh.amqp.limits import check_publishable
from rabbitmesh.amqp.messages import Outgoing, to_message
from rabbitmesh.cloudevents import CloudEvent, decode_amqp


@dataclass
class Published:
    exchange: str
    routing_key: str
    body: bytes
    properties: Basic.Properties
    mandatory: bool

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    def event(self) -> CloudEvent:
        return decode_amqp(self.headers, self.body, self.properties.content_type)


class StubPublisher:
    """Publisher and IngressPublisher (rabbitmesh/amqp/publisher.py) without RabbitMQ.

    `fail(exchange_or_queue, exc)` makes publishes there raise `exc`; `hold()` keeps every
    publish waiting for its "confirm" until `release()`. Like AmqpClient, it refuses what
    RabbitMQ could never take (UnpublishableMessage) before anything is "sent"."""

    def __init__(self, frame_max: int = 131072) -> None:
        self.published: list[Published] = []
        self.connected = True
        self.blocked = False
        self.frame_max = frame_max
        self.failures: dict[str, Exception] = {}
        self.unroutable: set[str] = set()
        self._released = asyncio.Event()
        self._released.set()
        self.waiting = 0  # publishes held, awaiting release()
        self._held = asyncio.Condition()

    def fail(self, where: str, exc: Exception | None = None) -> None:
        self.failures[where] = exc or PublishFailed("stub: not confirmed")

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def wait_held(self, count: int, timeout: float = 5.0) -> None:
        """Until `count` publishes wait for their confirm (after hold()); fails at timeout."""
        async with asyncio.timeout(timeout), self._held:
            await self._held.wait_for(lambda: self.waiting >= count)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: MessageLike,
        *,
        mandatory: bool = False,
        unroutable_ok: bool = False,
    ) -> bool:
        check_publishable(message.properties, self.frame_max)
        if not self.connected:
            raise PublishFailed("not connected to RabbitMQ")
        where = exchange or routing_key
        if where in self.failures:
            raise self.failures[where]
        async with self._held:
            self.waiting += 1
            self._held.notify_all()
        try:
            await self._released.wait()
        finally:
            self.waiting -= 1
        if where in self.unroutable:
            if unroutable_ok:
                return False
            if mandatory:
                raise PublishFailed("stub: no queue took the message")
        self.published.append(
            Published(exchange, routing_key, message.body, message.properties, mandatory)
        )
        return True

    def to(self, where: str) -> list[Published]:
        """What was published to this exchange (or, via the default exchange, queue)."""
        return [p for p in self.published if (p.exchange or p.routing_key) == where]


class StubWorkerQueues:
    def __init__(self) -> None:
        self.declared: set[int] = set()
        self.dead_letter_queues: set[str] = set()

    async def ensure_delay_queue(self, delay_ms: int) -> None:
        self.declared.add(delay_ms)

    async def ensure_dead_letter_queue(self, queue: str) -> None:
        self.dead_letter_queues.add(queue)


@dataclass
class StubMessage:
    """A message taken from a queue (dispatch/worker.py's Incoming)."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    message_id: str | None = "m-1"
    answered: list[str] = field(default_factory=list)  # "ack", "nack", "requeue"

    @classmethod
    def of(cls, event: CloudEvent, **headers: Any) -> StubMessage:
        message: Outgoing = to_message(event, headers or None)
        props = message.properties
        return cls(message.body, dict(props.headers or {}), props.content_type, props.message_id)

    async def ack(self, multiple: bool = False) -> None:
        self.answered.append("ack")

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self.answered.append("requeue" if requeue else "nack")
