"""Brings RabbitMQ and the running consumers in line with the desired set of resources."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from types import ModuleType

from prometheus_client import Counter

from rabbitmesh.amqp.clusters import ClusterUnavailable
from rabbitmesh.auth.gate import target_audience
from rabbitmesh.auth.policies import TARGET_KINDS
from rabbitmesh.dispatch.ordered import Splitter
from rabbitmesh.dispatch.worker import QueueWorker
from rabbitmesh.metrics import REGISTRY
from rabbitmesh.reconciler import (
    broker,
    brokerconfig,
    channel,
    configmap,
    eventpolicy,
    eventtransform,
    eventtype,
    jobsink,
    parallel,
    rabbitmqsink,
    replay,
    requestreply,
    sequence,
    sources,
    subscription,
    trigger,
)
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.base import Resource

log = logging.getLogger("rabbitmesh.reconciler")

#: Steps of a stop that talk to RabbitMQ (a consumer cancel, a channel close) at once:
#: thousands of Triggers do not send thousands of closes in one go.
STOP_CONCURRENCY = 256

#: kind -> its reconciler module (KIND, ORDER, reconcile(ctx, res), finalize(ctx, res)).
RECONCILERS: dict[str, ModuleType] = {
    m.KIND: m
    for m in (
        broker,
        trigger,
        channel,
        subscription,
        sequence,
        parallel,
        eventtype,
        rabbitmqsink,
        eventpolicy,
        configmap,
        brokerconfig,
        replay,
        eventtransform,
        requestreply,
        jobsink,
    )
}
#: One module reconciles every source kind (their status; they have no topology).
RECONCILERS.update(dict.fromkeys(sources.KINDS, sources))


#: Reconciles by kind and result: a write should add a handful, not one per resource.
reconciles_total = Counter(
    "rabbitmesh_reconciles_total",
    "Resources reconciled (result: ok, failed, deleted).",
    ["kind", "result"],
    registry=REGISTRY,
)


def order(res: Resource) -> int:
    m = RECONCILERS.get(res.KIND)
    return m.ORDER if m else 1000


class Controller:
    """Reconciles resources one key at a time; the control plane says which and when.

    Resources of a lower ORDER (brokers, channels) are reconciled before those that bind to
    them (triggers, subscriptions), and deleted after them; up to `concurrency` resources of
    one ORDER at once.
    """

    def __init__(
        self, ctx: Context, concurrency: int = 8, worker: tuple[int, int] = (0, 1)
    ) -> None:
        self.ctx = ctx
        self.concurrency = concurrency
        #: (this worker process's index, how many there are): where in a batch it starts.
        self.worker = worker
        #: key -> how often it was reconciled (or finalized) in this process.
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: Keys failing because another RabbitMQ (a RabbitmqBrokerConfig's) is unreachable:
        #: retried like any failure, but they do not keep this replica from being ready.
        self.external_failures: set[tuple[str, str, str]] = set()

    async def apply(
        self, present: list[Resource], gone: list[Resource]
    ) -> set[tuple[str, str, str]]:
        """Finalize `gone`, then reconcile `present`; the keys that failed."""
        for res in sorted(gone, key=order, reverse=True):
            await self._finalize(res)
        failed: set[tuple[str, str, str]] = set()
        sem = asyncio.Semaphore(self.concurrency)

        async def one(res: Resource) -> None:
            async with sem:
                if not await self._reconcile(res):
                    failed.add(res.key)

        by_order: dict[int, list[Resource]] = {}
        for res in present:
            by_order.setdefault(order(res), []).append(res)
        for _, group in sorted(by_order.items()):
            await asyncio.gather(*(one(r) for r in self._rotated(group)))
        return failed

    def _rotated(self, group: list[Resource]) -> list[Resource]:
        """`group` begun at this worker process's share of it: the worker processes of one
        `rabbitmesh run` all reconcile everything, and walking a batch in the same order
        they asked RabbitMQ for each new queue at the same moment. Two declares of a queue
        that does not exist yet both start creating it in RabbitMQ (a queue process and a
        transaction each; the later one finds the first's and gives up): at a cold start with
        5,000 Triggers that was a third of RabbitMQ's work (issue 13). Begun apart, each
        process creates its own share and only confirms the others' (a cheap lookup)."""
        index, count = self.worker
        if count < 2 or len(group) < 2:
            return group
        start = len(group) * index // count
        return group[start:] + group[:start]

    async def _reconcile(self, res: Resource) -> bool:
        self.counts[res.key] += 1
        module = RECONCILERS.get(res.KIND)
        if module is None:
            res.status.set_ready(True, "Accepted", "")
            reconciles_total.labels(res.KIND, "ok").inc()
            return True
        try:
            await module.reconcile(self.ctx, res)
            self._oidc(res)
            res.status.observed_generation = res.metadata.generation
            reconciles_total.labels(res.KIND, "ok").inc()
            self.external_failures.discard(res.key)
            return True
        except ClusterUnavailable as e:
            log.warning("reconciling %s %s/%s failed: %s", res.KIND, res.namespace, res.name, e)
            res.status.set_ready(False, "RabbitMQUnavailable", str(e))
            reconciles_total.labels(res.KIND, "failed").inc()
            self.external_failures.add(res.key)
            return False
        except Exception as e:  # RabbitMQ refused or went away: report, retry later
            log.warning("reconciling %s %s/%s failed: %s", res.KIND, res.namespace, res.name, e)
            res.status.set_ready(False, "ReconcileFailed", f"{type(e).__name__}: {e}")
            reconciles_total.labels(res.KIND, "failed").inc()
            return False

    def _oidc(self, res: Resource) -> None:
        """With authentication_oidc: a target's `status.address.audience`, and its policies
        looked up again (its labels may have changed)."""
        gate = self.ctx.gate
        if res.KIND not in TARGET_KINDS:
            return
        if gate is None:  # off (config-features can switch it off while running): no audience
            if res.status.address is not None:
                res.status.address.audience = None
            return
        gate.policies.invalidate()
        if res.status.address is not None:
            res.status.address.audience = target_audience(res)

    async def _finalize(self, res: Resource) -> None:
        self.counts.pop(res.key, None)  # names come and go: keep only the live ones
        self.external_failures.discard(res.key)
        reconciles_total.labels(res.KIND, "deleted").inc()
        module = RECONCILERS.get(res.KIND)
        if module is None:
            return
        try:
            await module.finalize(self.ctx, res)
        except Exception as e:
            log.warning("deleting %s %s/%s failed: %s", res.KIND, res.namespace, res.name, e)

    async def stop(self) -> None:
        """Stop every replay, splitter and queue worker, concurrently, within one
        RABBITMESH_SHUTDOWN_TIMEOUT in all (it was one per queue, one queue after another:
        minutes with thousands of Triggers, and one timeout per hanging subscriber; issue 13).

        1. Every worker stops consuming (and every replay stops): no delivery starts;
        2. the splitters finish the batch in hand and stop: nothing new enters the partitions;
        3. every worker waits for its deliveries in flight until the deadline, then cancels
           what still hangs (not acked: RabbitMQ redelivers it once the channel closes), acks
           what finished and closes its channel.
        At most STOP_CONCURRENCY of the steps that talk to RabbitMQ run at once."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.settings.shutdown_timeout

        def left() -> float:
            return max(0.0, deadline - loop.time())

        replays = [ctx.replays.pop(key) for key in list(ctx.replays)]
        splitters = [ctx.splitters.pop(queue) for queue in list(ctx.splitters)]
        workers = [ctx.workers.pop(queue) for queue in list(ctx.workers)]
        gate = asyncio.Semaphore(STOP_CONCURRENCY)

        async def bounded(step: Callable[[], Awaitable[None]]) -> None:
            async with gate:
                await step()

        async def stop_splitter(splitter: Splitter) -> None:
            await splitter.stop(left())

        async def stop_worker(worker: QueueWorker) -> None:
            await worker.drain(left())  # waiting only: not bounded
            await bounded(worker.finish)

        await _all(
            *(replay.stop() for replay in replays),
            *(bounded(worker.stop_consuming) for worker in workers),
        )
        await _all(*(bounded(partial(stop_splitter, splitter)) for splitter in splitters))
        await _all(*(stop_worker(worker) for worker in workers))


async def _all(*steps: Awaitable[None]) -> None:
    """Run `steps` concurrently to their end; one that fails is logged, the others go on."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, Exception):
            log.warning("stopping: %s: %s", type(result).__name__, result)
        elif isinstance(result, BaseException):
            raise result
