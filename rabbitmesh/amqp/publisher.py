"""The small interface the data plane publishes through, in front of the AMQP client.

Ingress, queue workers and repliers depend on these protocols, not on AmqpClient
(amqp/client.py, the real one): their unit tests hand them a stub that records what was
published and fails on demand (tests/support/stubs.py), as dramatiq tests its retries with a
stub broker; the integration tests run them against RabbitMQ.
"""

from __future__ import annotations

from typing import Protocol

from rabbitmesh.amqp.client import MessageLike


class Publisher(Protocol):
    """A confirmed publish. Raises PublishFailed (transient: RabbitMQ down, blocked, slow,
    or unroutable with `mandatory`) or UnpublishableMessage (permanent: a message RabbitMQ
    could never take). With `unroutable_ok`, an unroutable message returns False instead."""

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: MessageLike,
        *,
        mandatory: bool = False,
        unroutable_ok: bool = False,
    ) -> bool: ...


class IngressPublisher(Publisher, Protocol):
    """What the HTTP ingress also asks before it publishes (to answer 503/413 at once)."""

    @property
    def connected(self) -> bool: ...

    @property
    def blocked(self) -> bool: ...

    @property
    def frame_max(self) -> int: ...


class WorkerQueues(Protocol):
    """The queues a worker declares itself when it needs them (amqp/topology.py): the delay
    queues retries go through, and the `:dlq` it is about to reject a message into."""

    async def ensure_delay_queue(self, delay_ms: int) -> None: ...

    async def ensure_dead_letter_queue(self, queue: str) -> None: ...
