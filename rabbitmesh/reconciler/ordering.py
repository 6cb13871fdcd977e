"""Wiring a Trigger's or Subscription's queue for ordered or unordered delivery.

Ordered (docs/ordering.md): the queue is split into `{queue}:p0..p{N-1}` by a Splitter, and
each partition is delivered by an OrderedWorker. Partitions left from an earlier, larger N
(or from before the resource became unordered) keep being delivered, in order, until the
resource is deleted: nothing that waits in them is stranded.
"""

from __future__ import annotations

from rabbitmesh.amqp.clusters import Cluster
from rabbitmesh.dispatch.ordered import OrderedWorker, Splitter
from rabbitmesh.dispatch.worker import Subscriber
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.ordering import (
    DEFAULT_PARTITIONS,
    MAX_PARTITIONS,
    ORDER_ANNOTATION,
    PARTITIONS_ANNOTATION,
)


async def deliver(
    ctx: Context,
    queue: str,
    subscriber: Subscriber,
    partitions: int | None,
    key: tuple[str, str, str] | None = None,
    *,
    concurrency: int | None = None,
    cluster: Cluster | None = None,
) -> None:
    """Deliver `queue` to `subscriber`, ordered through `partitions` partitions or not;
    `key`: the resource, whose earlier specs may have left partitions to drain. Unordered,
    `concurrency` deliveries are in flight (a trigger's parallelism); ordered, each
    partition has one. The partitions live on `cluster` (default: where `queue` is), the
    RabbitMQ of the queue they split."""
    cluster = cluster or ctx.cluster_of_queue(queue)
    dlq = ctx.names.dead_letter_queue(queue)
    earlier = (
        historic_partitions(ctx, key) if key is not None and queue not in ctx.partitions else 0
    )
    known = max(ctx.partitions.get(queue, 0), partitions or 0, earlier)
    for i in range(partitions or 0):
        await cluster.topology.declare_partition_queue(ctx.names.partition_queue(queue, i), dlq)
    ctx.partitions[queue] = known
    if partitions is None:
        await stop_splitter(ctx, queue)
        await ctx.run_queue(queue, subscriber, concurrency=concurrency, cluster=cluster)
    else:
        await ctx.stop_queue(queue)  # the unordered worker, if it was unordered until now
        await ctx.run_dead_letters(queue, subscriber, cluster)
    if not ctx.run_dispatchers:
        return
    for i in range(known):
        await _run_partition(ctx, ctx.names.partition_queue(queue, i), queue, subscriber, cluster)
    if partitions is not None:
        wanted = [ctx.names.partition_queue(queue, i) for i in range(partitions)]
        splitter = ctx.splitters.get(queue)
        if splitter is not None and (
            splitter.partitions != wanted or splitter.consumer is not cluster.consumers
        ):
            await stop_splitter(ctx, queue)
            splitter = None
        if splitter is None:
            splitter = Splitter(
                queue=queue,
                partitions=wanted,
                consumer=cluster.consumers,
                publisher=cluster.publisher,
            )
            await splitter.start()
            ctx.splitters[queue] = splitter


async def _run_partition(
    ctx: Context, queue: str, parent: str, subscriber: Subscriber, cluster: Cluster
) -> None:
    worker = ctx.workers.get(queue)
    if worker is not None and worker.consumer is not cluster.consumers:
        await ctx.stop_queue(queue)  # the broker moved to another RabbitMQ
        worker = None
    if worker is not None:
        worker.subscriber = subscriber
        return
    worker = OrderedWorker(
        queue=queue,
        parent_queue=parent,
        subscriber=subscriber,
        consumer=cluster.consumers,
        publisher=cluster.publisher,
        topology=cluster.topology,
        names=ctx.names,
        session=ctx.session,
    )
    await worker.start()
    ctx.workers[queue] = worker


async def stop_splitter(ctx: Context, queue: str) -> None:
    splitter = ctx.splitters.pop(queue, None)
    if splitter is not None:
        await splitter.stop(ctx.settings.shutdown_timeout)


async def delete_partitions(ctx: Context, queue: str, at_least: int = 0) -> None:
    """Stop and delete every partition of `queue` this process knows of (or `at_least`)."""
    await stop_splitter(ctx, queue)
    topology = ctx.cluster_of_queue(queue).topology  # before ctx.delete_queue forgets it
    for i in range(max(ctx.partitions.pop(queue, 0), at_least)):
        name = ctx.names.partition_queue(queue, i)
        await ctx.stop_queue(name)
        await topology.delete_queue(name)


def historic_partitions(ctx: Context, key: tuple[str, str, str]) -> int:
    """The most partitions earlier specs of this resource asked for (the resource store
    remembers them), so a fresh process still drains and deletes all of them."""
    most = 0
    for old in ctx.history.get(key, []):
        annotations = (old.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ORDER_ANNOTATION) != "ordered":
            continue
        raw = str(annotations.get(PARTITIONS_ANNOTATION, DEFAULT_PARTITIONS)).strip()
        if raw.isdigit() and 1 <= int(raw) <= MAX_PARTITIONS:
            most = max(most, int(raw))
    return most
