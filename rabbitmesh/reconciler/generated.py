"""What Sequences and Parallels generate: internal channels and subscriptions.

They are not resources of their own (nothing to list or edit by hand); their state shows in
the flow's status, shaped as Knative's channel and subscription statuses.
"""

from __future__ import annotations

from typing import Any

from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.subscription import Unresolved, unwire
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.messaging import MESSAGING_V1, ChannelTemplate


def _ready(error: Unresolved | None) -> dict[str, str]:
    if error is None:
        return {"type": "Ready", "status": "True"}
    return {"type": "Ready", "status": "False", "reason": error.reason, "message": error.message}


def channel_status(template: ChannelTemplate, name: str, namespace: str) -> dict[str, Any]:
    return {"channel": template.reference(name, namespace), "ready": _ready(None)}


def subscription_status(name: str, namespace: str, error: Unresolved | None) -> dict[str, Any]:
    ref = {"apiVersion": MESSAGING_V1, "kind": "Subscription", "name": name, "namespace": namespace}
    return {"subscription": ref, "ready": _ready(error)}


def previous_count(ctx: Context, res: Resource, status_key: str, spec_key: str) -> int:
    """The most steps or branches the flow had before: at its last reconcile in this process
    (the controller carries the status over to a resource's new version), or in an earlier
    spec the resource store remembers (changed while no rabbitmesh ran)."""
    counts = [0]
    items = (res.status.model_extra or {}).get(status_key)
    if isinstance(items, list):
        counts.append(len(items))
    for old in ctx.history.get(res.key, []):
        spec = old.get("spec")
        listed = spec.get(spec_key) if isinstance(spec, dict) else None
        if isinstance(listed, list):
            counts.append(len(listed))
    return max(counts)


async def remove(ctx: Context, queues: list[str], exchanges: list[str]) -> None:
    """Delete generated subscriptions (with their reply queues), then generated channels."""
    for queue in queues:
        await unwire(ctx, queue)
    for exchange in exchanges:
        await ctx.topology.delete_exchange(exchange)
