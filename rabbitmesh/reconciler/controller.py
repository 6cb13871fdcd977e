"""Brings RabbitMQ and the running consumers in line with the desired set of resources."""

from __future__ import annotations

import logging
from types import ModuleType

from rabbitmesh.reconciler import (
    broker,
    channel,
    eventtype,
    parallel,
    sequence,
    sources,
    subscription,
    trigger,
)
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.base import Resource

log = logging.getLogger("rabbitmesh.reconciler")

#: kind -> its reconciler module (KIND, ORDER, reconcile(ctx, res), finalize(ctx, res)).
RECONCILERS: dict[str, ModuleType] = {
    m.KIND: m for m in (broker, trigger, channel, subscription, sequence, parallel, eventtype)
}
#: One module reconciles every source kind (their status; they have no topology).
RECONCILERS.update(dict.fromkeys(sources.KINDS, sources))


def _order(res: Resource) -> int:
    m = RECONCILERS.get(res.KIND)
    return m.ORDER if m else 1000


class Controller:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def apply_all(self, desired: list[Resource]) -> bool:
        """Reconcile `desired` as the whole truth; delete what is no longer there.

        Returns True when every resource reconciled without an infrastructure error.
        """
        ctx = self.ctx
        wanted = {r.key: r for r in desired}
        gone = [r for k, r in ctx.resources.items() if k not in wanted]
        for res in sorted(gone, key=_order, reverse=True):
            await self._finalize(res)
            ctx.resources.pop(res.key, None)
        for res in desired:
            old = ctx.resources.get(res.key)
            if old is not None:
                res.status = old.status  # keep transition times across re-applies
            ctx.resources[res.key] = res
        ok = True
        for res in sorted(desired, key=_order):
            ok &= await self._reconcile(res)
        return ok

    async def _reconcile(self, res: Resource) -> bool:
        module = RECONCILERS.get(res.KIND)
        if module is None:
            res.status.set_ready(True, "Accepted", "")
            return True
        try:
            await module.reconcile(self.ctx, res)
            res.status.observed_generation = res.metadata.generation
            return True
        except Exception as e:  # RabbitMQ refused or went away: report, retry later
            log.warning("reconciling %s %s/%s failed: %s", res.KIND, res.namespace, res.name, e)
            res.status.set_ready(False, "ReconcileFailed", f"{type(e).__name__}: {e}")
            return False

    async def _finalize(self, res: Resource) -> None:
        module = RECONCILERS.get(res.KIND)
        if module is None:
            return
        try:
            await module.finalize(self.ctx, res)
        except Exception as e:
            log.warning("deleting %s %s/%s failed: %s", res.KIND, res.namespace, res.name, e)

    async def stop(self) -> None:
        for queue in list(self.ctx.workers):
            await self.ctx.stop_queue(queue)
