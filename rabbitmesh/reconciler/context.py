"""What every kind's reconciler works with: RabbitMQ, the HTTP client, settings, workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.clusters import Cluster, Clusters
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.pool import ConsumerPool
from rabbitmesh.amqp.remote import Clients
from rabbitmesh.amqp.topology import QueueType, Topology
from rabbitmesh.auth.identity import destination_audience, subject
from rabbitmesh.config.effective import Effective
from rabbitmesh.dispatch.deadletter_store import forget, keeper
from rabbitmesh.dispatch.deadletters import SinkWorker
from rabbitmesh.dispatch.ordered import Splitter
from rabbitmesh.dispatch.policy import DeliveryPolicy, seconds
from rabbitmesh.dispatch.replay import ReplayRunner
from rabbitmesh.dispatch.worker import QueueWorker, Subscriber
from rabbitmesh.reconciler.resolve import resolve
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.settings import Settings

if TYPE_CHECKING:
    from rabbitmesh.auth.gate import Gate
    from rabbitmesh.auth.issuer import Issuer
    from rabbitmesh.dataplane import Target
    from rabbitmesh.ingress.requestreply import RequestReplies
    from rabbitmesh.jobs.runner import JobRunner
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
    #: Ordered queues (docs/ordering.md): queue -> its splitter on this replica, and queue ->
    #: how many partitions it has had in this process (partitions left over keep draining).
    splitters: dict[str, Splitter] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    #: Replays running (or standing by) on this replica, by resource key (docs/replay.md).
    replays: dict[tuple[str, str, str], ReplayRunner] = field(default_factory=dict)
    #: Called with a resource's key when something other than a reconcile changed its status
    #: (a Replay's progress): the control plane passes it on to `?watch=true` and the console.
    on_status: Callable[[tuple[str, str, str]], None] | None = None
    #: The sources this replica runs (roles `all` and `sources`); None elsewhere.
    sources: SourceManager | None = None
    #: This replica's RequestReply reply queues and waiters (roles `all` and `ingress`).
    requestreplies: RequestReplies | None = None
    #: This replica's JobSink runners (roles `all` and `dispatcher`).
    jobs: JobRunner | None = None
    #: Connections of the RabbitmqSinks (one per RabbitMQ URL; rabbitmesh/amqp/remote.py).
    bridge_clients: Clients = field(default_factory=lambda: Clients(10.0, None))
    #: (kind, namespace, name) -> the ingress target of a RabbitmqSink that is Ready.
    bridge_targets: dict[tuple[str, str, str], Target] = field(default_factory=dict)
    #: With authentication_oidc: the ingress' sender check, and rabbitmesh's own issuer.
    gate: Gate | None = None
    issuer: Issuer | None = None
    #: Other RabbitMQs (or vhosts) brokers live on (rabbitmesh/amqp/clusters.py); None: only
    #: this one.
    clusters: Clusters | None = None
    #: queue -> the Cluster it was declared on, when not the main one.
    queue_clusters: dict[str, Cluster] = field(default_factory=dict)
    #: Broker key -> the placement its topology has in this process (config/brokers.py).
    placements: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        return self.resources.get((kind, namespace, name))

    def effective(self) -> Effective:
        """The configuration in force (knative-eventing ConfigMaps, then settings)."""
        return Effective(self.settings, self.get)

    @property
    def main_cluster(self) -> Cluster:
        if self.clusters is not None:
            return self.clusters.main
        return Cluster(self.settings.amqp_url, self.publisher, self.consumer, self.topology)

    async def cluster(self, url: str | None) -> Cluster:
        """The Cluster at `url` (None: RABBITMESH_AMQP_URL), connected."""
        if url is None or self.clusters is None:
            return self.main_cluster
        return await self.clusters.get(url)

    def cluster_of_queue(self, queue: str) -> Cluster:
        return self.queue_clusters.get(queue) or self.main_cluster

    def resolve(self, dest: Destination, namespace: str) -> str:
        return resolve(
            dest,
            namespace,
            base_url=self.settings.base_url,
            service_url_template=self.settings.service_url_template,
        )

    def sender_auth(
        self, sender: Resource, dest: Destination, namespace: str
    ) -> Callable[[], dict[str, str] | None] | None:
        """`Authorization` headers for what `sender` sends to `dest` (its own identity, the
        destination's audience); None without authentication_oidc or a known audience."""
        issuer = self.issuer
        if issuer is None:
            return None
        ref = dest.ref
        aud = destination_audience(
            ref.kind if ref else None,
            ref.name if ref else None,
            (ref.namespace if ref else None) or namespace,
            dest.audience,
        )
        if aud is None:
            return None
        sub = subject(sender.GROUP, sender.KIND, sender.namespace, sender.name)
        return lambda: issuer.headers(sub, aud)

    def policy(self, spec: DeliverySpec, namespace: str) -> DeliveryPolicy:
        """A merged DeliverySpec with the configured defaults filled in."""
        s = self.settings
        eff = self.effective()
        # config-features: with delivery-timeout / delivery-retryafter disabled, Knative
        # does not take the field; here it is ignored.
        timeout = seconds(spec.timeout) if eff.enabled("delivery-timeout") else None
        retry_after = seconds(spec.retry_after_max) if eff.enabled("delivery-retryafter") else None
        return DeliveryPolicy(
            retry=s.default_retry if spec.retry is None else spec.retry,
            backoff_policy=spec.backoff_policy or s.default_backoff_policy,
            backoff_delay=seconds(spec.backoff_delay) or s.default_backoff.total_seconds(),
            timeout=timeout or s.default_timeout_seconds,
            retry_after_max=retry_after,
            dead_letter_url=(
                self.resolve(spec.dead_letter_sink, namespace) if spec.dead_letter_sink else None
            ),
            format=spec.format or "binary",
        )

    async def run_queue(
        self,
        queue: str,
        subscriber: Subscriber,
        *,
        concurrency: int | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        """Start delivering `queue` to `subscriber`, or switch an existing worker to it.

        Switching applies from the next delivery on; nothing queued is lost. A different
        `concurrency` (a trigger's parallelism annotation) restarts the worker: its in-flight
        deliveries finish, the rest stay in RabbitMQ for the new one.
        """
        self.keep_dead_letters(subscriber)
        if not self.run_dispatchers:
            return
        cluster = cluster or self.cluster_of_queue(queue)
        concurrency = concurrency or self.settings.concurrency
        worker = self.workers.get(queue)
        if worker is not None and (
            worker.concurrency != concurrency or worker.consumer is not cluster.consumers
        ):
            await self.stop_queue(queue)
            worker = None
        if worker is not None:
            worker.subscriber = subscriber
        else:
            await self._start_worker(queue, subscriber, cluster, concurrency)
        await self.run_dead_letters(queue, subscriber, cluster)

    def keep_dead_letters(self, subscriber: Subscriber) -> None:
        """With no dead-letter sink, final failures go to the dead-letter store (unless
        RABBITMESH_DEAD_LETTER_RETENTION is PT0S: dropped, as Knative does). The store always
        lives on the main RabbitMQ, also for a queue on another cluster (docs/delivery.md)."""
        retention = self.settings.dead_letter_retention_seconds
        subscriber.keep_dead_letter = (
            keeper(self.publisher, self.names, retention, subscriber.name) if retention else None
        )

    async def _start_worker(
        self,
        queue: str,
        subscriber: Subscriber,
        cluster: Cluster,
        concurrency: int,
        dead_letters: bool = False,
    ) -> None:
        """The one place a QueueWorker is built, on `cluster` (the RabbitMQ the queue lives
        on). A `:dlq`'s worker (`dead_letters`) delivers to its dead-letter sink with at most
        64 prefetched and 16 in flight."""
        s = self.settings
        worker = QueueWorker(
            queue=queue,
            subscriber=subscriber,
            consumer=cluster.consumers,
            publisher=cluster.publisher,
            topology=cluster.topology,
            names=self.names,
            session=self.session,
            prefetch=min(s.prefetch, 64) if dead_letters else s.prefetch,
            concurrency=min(concurrency, 16) if dead_letters else concurrency,
            mode="dead-letter" if dead_letters else "deliver",
            max_reply_bytes=s.max_event_bytes,
        )
        await worker.start()
        self.workers[queue] = worker

    async def run_dead_letters(
        self, queue: str, subscriber: Subscriber, cluster: Cluster | None = None
    ) -> None:
        """Deliver the `:dlq` (on `cluster`, default: where `queue` is) to the dead-letter
        sink; what it refuses for good is kept in the dead-letter store (docs/delivery.md),
        or parked with a retention of PT0S."""
        cluster = cluster or self.cluster_of_queue(queue)
        self.keep_dead_letters(subscriber)
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
            auth=subscriber.dead_letter_auth,
        )
        retention = self.settings.dead_letter_retention_seconds
        kind = SinkWorker if retention > 0 else QueueWorker
        worker = self.workers.get(dlq)
        if worker is not None and type(worker) is kind and worker.consumer is cluster.consumers:
            worker.subscriber = dl_sub
            return
        # the retention changed (the other kind of worker), or the queue moved cluster
        await self.stop_queue(dlq)
        if retention == 0:
            await self._start_worker(
                dlq, dl_sub, cluster, self.settings.concurrency, dead_letters=True
            )
            return
        s = self.settings
        worker = SinkWorker(
            keep=keeper(self.publisher, self.names, retention, dl_sub.name),
            parent_queue=queue,
            queue=dlq,
            subscriber=dl_sub,
            consumer=cluster.consumers,
            publisher=cluster.publisher,
            topology=cluster.topology,
            names=self.names,
            session=self.session,
            prefetch=min(s.prefetch, 64),
            concurrency=min(s.concurrency, 16),
        )
        await worker.start()
        self.workers[dlq] = worker

    async def bind_exactly(self, queue: str, wanted: set[tuple[str, str]]) -> None:
        """Bind new keys before unbinding old ones, so no event falls between the two.

        Every wanted key is (re)bound, not only new ones: binding is idempotent, and another
        replica may have deleted and re-declared the exchange meanwhile.
        """
        had = self.bindings.get(queue, set())
        topology = self.cluster_of_queue(queue).topology
        for exchange, key in sorted(wanted):
            await topology.bind(queue, exchange, key)
        for exchange, key in sorted(had - wanted):
            await topology.unbind(queue, exchange, key)
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
        topology = self.cluster_of_queue(queue).topology
        await topology.delete_queue(queue)
        await topology.delete_queue(dlq)
        self.queue_clusters.pop(queue, None)
        await self.topology.delete_queue(self.names.dead_letter_store(queue))
        forget(self.names.dead_letter_store(queue))

    async def declare_delivery_queue(
        self,
        queue: str,
        cluster: Cluster | None = None,
        queue_type: QueueType | None = None,
        dead_letter_queue: bool = False,
    ) -> None:
        """Declare a subscriber's queue (and its :dlq, when a dead-letter sink consumes it:
        Topology.declare_delivery_queue) on `cluster` (default: the main one), of
        `queue_type` (default: RABBITMESH_QUEUE_TYPE), and remember where it is."""
        cluster = cluster or self.main_cluster
        await cluster.topology.declare_delivery_queue(queue, queue_type, dead_letter_queue)
        if cluster.url != self.settings.amqp_url:
            self.queue_clusters[queue] = cluster
        else:
            self.queue_clusters.pop(queue, None)
