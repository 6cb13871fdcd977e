"""Whether a hosted resource's ingress takes events now, and where they go (the kinds and
their exchanges: rabbitmesh/hosted.py)."""

from __future__ import annotations

from dataclasses import replace

from rabbitmesh.dataplane import Target
from rabbitmesh.hosted import hosted_target
from rabbitmesh.ingress.auth import tokens
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.registry import canonical_kind


def ingress_target(ctx: Context, kind: str, namespace: str, name: str) -> Target | None:
    """Where the ingress path of this resource publishes; None while it does not exist or
    its exchange is not declared yet (a Broker: until it is Ready)."""
    res = ctx.get(canonical_kind(kind), namespace, name)
    if res is None:
        return None
    if kind == "RabbitmqSink":
        target = ctx.bridge_targets.get((kind, namespace, name))
    elif isinstance(res, Broker):
        if res.status.ready != "True":
            return None
        target = hosted_target(ctx.names, res.KIND, namespace, name)
        if target is None:
            return None
        placement = ctx.placements.get(res.key)
        if placement is not None and placement.url is not None and ctx.clusters is not None:
            # A broker on another RabbitMQ (RabbitmqBrokerConfig): publish there.
            cluster = ctx.clusters.connected_cluster(placement.url)
            if cluster is None:
                return None
            target = replace(target, publisher=cluster.publisher)
        accepted = tokens(ctx.get, res)
        if target is not None and accepted is not None:
            # The per-broker token is the simple alternative to OIDC: it alone decides.
            return replace(target, tokens=accepted)
    elif res.status.address is None:
        return None
    else:
        target = hosted_target(ctx.names, res.KIND, namespace, name)
    gate = ctx.gate
    if target is None or gate is None:
        return target
    return replace(target, authorize=lambda request: gate.admit(request, res))


def not_ready_reason(ctx: Context, kind: str, namespace: str, name: str) -> str | None:
    """Why an ingress path that exists takes no events ("... exists but is not Ready:
    reason: message"), or None when the resource does not exist. Off the hot path: only
    asked once `ingress_target` found no target."""
    res = ctx.get(canonical_kind(kind), namespace, name)
    if res is None:
        return None
    ready = next((c for c in res.status.conditions if c.type == "Ready"), None)
    why = "not reconciled yet"
    if ready is not None and (ready.reason or ready.message):
        why = ": ".join(part for part in (ready.reason, ready.message) if part)
    return f"{res.KIND} {namespace}/{name} exists but is not Ready ({why})"
