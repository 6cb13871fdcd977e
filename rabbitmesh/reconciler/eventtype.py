"""EventType -> status only: Ready when the addressable it refers to exists.

An EventType is a registry entry, nothing in RabbitMQ. As in Knative (v1beta3's
`ReferenceExists`), one whose `spec.reference` (or v1beta2 `spec.broker`) names a resource
rabbitmesh hosts that does not exist is not Ready, reason `ResourceDoesNotExist`; it becomes
Ready when that resource appears (the controller reconciles every resource on every change).
"""

from __future__ import annotations

from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import HOSTED_PATHS
from rabbitmesh.resources.eventtypes import EventType
from rabbitmesh.resources.registry import canonical_kind

KIND = "EventType"
ORDER = 90


async def reconcile(ctx: Context, et: EventType) -> None:
    ref = et.ref
    if ref is None:
        et.status.set_ready(True, "ReferenceNotSet", "")
        return
    ns = ref.namespace or et.namespace
    if ref.kind in HOSTED_PATHS and ctx.get(canonical_kind(ref.kind), ns, ref.name) is None:
        et.status.set_ready(
            False,
            "ResourceDoesNotExist",
            f"{ref.kind} {ref.name!r} in spec.reference does not exist in namespace {ns!r}",
        )
        return
    et.status.set_ready(True, "ReferenceExists", "")


async def finalize(ctx: Context, et: EventType) -> None:
    """Nothing to remove: an EventType has no topology."""
