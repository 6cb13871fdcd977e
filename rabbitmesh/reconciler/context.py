"""What every kind's reconciler works with: RabbitMQ, the HTTP client, settings, workers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.pool import ConsumerPool
from rabbitmesh.amqp.topology import Topology
from rabbitmesh.dispatch.policy import DeliveryPolicy, seconds
from rabbitmesh.dispatch.worker import QueueWorker, Subscriber
from rabbitmesh.reconciler.resolve import resolve
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.settings import Settings

if TYPE_CHECKING:
    from rabbitmesh.sources.manager import SourceManager

log = logging.getLogger("rabbitmesh.reconciler")

#: Dead-letter sinks are retried for ever (events wait in RabbitMQ), at most this far apart.
DEAD_LETTER_MAX_BACKOFF = 60.0


@dataclass
class Context:
    settings: Settings
    names: Names
    publisher: AmqpClient
    #: Where queue workers get their channels: an AmqpClient or a ConsumerPool (amqp/pool.py).
    consumer: AmqpClient | ConsumerPool
    topology: Topology
    session: aiohttp.ClientSession
    run_dispatchers: bool
    resources: dict[tuple[str, str, str], Resource] = field(default_factory=dict)
    workers: dict[str, QueueWorker] = field(default_factory=dict)
    #: queue -> the (exchange, binding key) pairs this process bound, so updates can unbind.
    bindings: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    #: (kind, namespace, name) -> earlier specs from the resource store (newest last), so a
    #: fresh process can undo what an earlier spec did before it started.
    history: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    #: The sources this replica runs (roles `all` and `sources`); None elsewhere.
    sources: SourceManager | None = None

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        return self.resources.get((kind, namespace, name))

    def resolve(self, dest: Destination, namespace: str) -> str:
        return resolve(
            dest,
            namespace,
            base_url=self.settings.base_url,
            service_url_template=self.settings.service_url_template,
        )

    def policy(self, spec: DeliverySpec, namespace: str) -> DeliveryPolicy:
        """A merged DeliverySpec with the configured defaults filled in."""
        s = self.settings
        return DeliveryPolicy(
            retry=s.default_retry if spec.retry is None else spec.retry,
            backoff_policy=spec.backoff_policy or s.default_backoff_policy,
            backoff_delay=seconds(spec.backoff_delay) or s.default_backoff.total_seconds(),
            timeout=seconds(spec.timeout) or s.default_timeout_seconds,
            retry_after_max=seconds(spec.retry_after_max),
            dead_letter_url=(
                self.resolve(spec.dead_letter_sink, namespace) if spec.dead_letter_sink else None
            ),
            format=spec.format or "binary",
        )

    async def run_queue(self, queue: str, subscriber: Subscriber) -> None:
        """Start delivering `queue` to `subscriber`, or switch an existing worker to it.

        Switching applies from the next delivery on; nothing queued is lost.
        """
        if not self.run_dispatchers:
            return
        worker = self.workers.get(queue)
        if worker is not None:
            worker.subscriber = subscriber
        else:
            await self._start_worker(queue, subscriber)
        await self._run_dead_letters(queue, subscriber)

    async def _start_worker(
        self, queue: str, subscriber: Subscriber, dead_letters: bool = False
    ) -> None:
        """The one place a QueueWorker is built. A `:dlq`'s worker (`dead_letters`) delivers
        to its dead-letter sink with at most 64 prefetched and 16 in flight."""
        s = self.settings
        worker = QueueWorker(
            queue=queue,
            subscriber=subscriber,
            consumer=self.consumer,
            publisher=self.publisher,
            topology=self.topology,
            names=self.names,
            session=self.session,
            prefetch=min(s.prefetch, 64) if dead_letters else s.prefetch,
            concurrency=min(s.concurrency, 16) if dead_letters else s.concurrency,
            mode="dead-letter" if dead_letters else "deliver",
            max_reply_bytes=s.max_event_bytes,
        )
        await worker.start()
        self.workers[queue] = worker

    async def _run_dead_letters(self, queue: str, subscriber: Subscriber) -> None:
        dlq = self.names.dead_letter_queue(queue)
        url = subscriber.policy.dead_letter_url
        if url is None:
            await self.stop_queue(dlq)  # its events wait until a sink is configured again
            return
        p = subscriber.policy
        dl_sub = Subscriber(
            name=f"{subscriber.name} dead-letter sink",
            namespace=subscriber.namespace,
            url=url,
            policy=DeliveryPolicy(
                retry=None,
                backoff_policy="exponential",
                backoff_delay=p.backoff_delay,
                timeout=p.timeout,
                retry_after_max=p.retry_after_max,
                dead_letter_url=None,
                format=p.format,
                max_backoff=DEAD_LETTER_MAX_BACKOFF,
            ),
            reply_must_be_event=False,
        )
        worker = self.workers.get(dlq)
        if worker is not None:
            worker.subscriber = dl_sub
            return
        await self._start_worker(dlq, dl_sub, dead_letters=True)

    async def bind_exactly(self, queue: str, wanted: set[tuple[str, str]]) -> None:
        """Bind new keys before unbinding old ones, so no event falls between the two.

        Every wanted key is (re)bound, not only new ones: binding is idempotent, and another
        replica may have deleted and re-declared the exchange meanwhile.
        """
        had = self.bindings.get(queue, set())
        for exchange, key in sorted(wanted):
            await self.topology.bind(queue, exchange, key)
        for exchange, key in sorted(had - wanted):
            await self.topology.unbind(queue, exchange, key)
        self.bindings[queue] = set(wanted)

    async def stop_queue(self, queue: str) -> None:
        worker = self.workers.pop(queue, None)
        if worker is not None:
            await worker.stop(self.settings.shutdown_timeout)

    async def delete_queue(self, queue: str) -> None:
        """Stop consuming a queue and its dead-letter queue and delete both."""
        dlq = self.names.dead_letter_queue(queue)
        await self.stop_queue(queue)
        await self.stop_queue(dlq)
        self.bindings.pop(queue, None)
        await self.topology.delete_queue(queue)
        await self.topology.delete_queue(dlq)
