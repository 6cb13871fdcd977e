"""EventType -> status only: Ready when the addressable it refers to exists.

An EventType is a registry entry, nothing in RabbitMQ. As in Knative (v1beta3's
`ReferenceExists`), one whose `spec.reference` (or v1beta2 `spec.broker`) names a resource
rabbitmesh hosts that does not exist is not Ready, reason `ResourceDoesNotExist`; it becomes
Ready when that resource appears (the controller reconciles every resource on every change).
"""

from __future__ import annotations

from rabbitmesh.hosted import hosted_kind
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.eventtypes import EventType

KIND = "EventType"
ORDER = 90


async def reconcile(ctx: Context, et: EventType) -> None:
    ref = et.ref
    if ref is None:
        et.status.set_ready(True, "ReferenceNotSet", "")
        return
    ns = ref.namespace or et.namespace
    hosted = hosted_kind(ref.kind)
    if hosted is not None and ctx.get(hosted.kind, ns, ref.name) is None:
        et.status.set_ready(
            False,
            "ResourceDoesNotExist",
            f"{ref.kind} {ref.name!r} in spec.reference does not exist in namespace {ns!r}",
        )
        return
    et.status.set_ready(True, "ReferenceExists", "")


async def finalize(ctx: Context, et: EventType) -> None:
    """Nothing to remove: an EventType has no topology."""
