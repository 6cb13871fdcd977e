"""EventTransform -> an address on rabbitmesh's own HTTP server (no topology: it is a
synchronous request/response transform, as Knative's JSONata service is; the endpoint is
rabbitmesh/ingress/eventtransform.py)."""

from __future__ import annotations

from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.eventing_v1alpha1 import EventTransform
from rabbitmesh.transform.jsonata import compiled

KIND = "EventTransform"
ORDER = 15


async def reconcile(ctx: Context, et: EventTransform) -> None:
    extra = et.status.model_extra
    assert extra is not None
    # Compiled here, once, so the first event does not pay for it (validation compiled it
    # too: the cache keeps it).
    assert et.spec.jsonata is not None
    compiled(et.spec.jsonata.expression)
    if et.reply_expression is not None:
        compiled(et.reply_expression)
    if et.spec.sink is not None:
        extra["sinkUri"] = ctx.resolve(et.spec.sink, et.namespace)
    else:
        extra.pop("sinkUri", None)
    # Knative reports the transformation's kind in status (jsonataTransformationStatus).
    extra["jsonataTransformationStatus"] = {"expressionCompiled": True}
    et.status.address = Address(url=address_url(ctx.settings.base_url, KIND, et.namespace, et.name))
    et.status.set_ready(True, "TransformReady", "")


async def finalize(ctx: Context, et: EventTransform) -> None:
    """Nothing to undo: the endpoint answers 404 once the resource is gone."""
