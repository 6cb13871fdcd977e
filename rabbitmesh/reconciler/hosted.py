"""Whether a hosted resource's ingress takes events now, and where they go (the kinds and
their exchanges: rabbitmesh/hosted.py)."""

from __future__ import annotations

from dataclasses import replace

from rabbitmesh.dataplane import Target
from rabbitmesh.hosted import hosted_target
from rabbitmesh.ingress.auth import tokens
from rabbitmesh.ingress.single import not_ready_message
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.registry import canonical_kind


def ingress_target(ctx: Context, kind: str, namespace: str, name: str) -> Target | None:
    """Where the ingress path of this resource publishes; None while it does not exist or
    its exchange is not declared yet (a Broker: until it is Ready)."""
    res = ctx.get(canonical_kind(kind), namespace, name)
    if res is None:
        return None
    if isinstance(res, Broker):
        if res.status.ready != "True":
            return None
        target = hosted_target(ctx.names, res.KIND, namespace, name)
        accepted = tokens(ctx.get, res)
        return target if target is None or accepted is None else replace(target, tokens=accepted)
    if res.status.address is None:
        return None
    if res.KIND == "JobSink":
        if res.status.ready != "True":
            return None  # e.g. its runtime is not allowed: take no runs that cannot start
        target = hosted_target(ctx.names, res.KIND, namespace, name)
        accepted = tokens(ctx.get, res)  # each event starts a run: it may need a token
        return target if target is None or accepted is None else replace(target, tokens=accepted)
    return hosted_target(ctx.names, res.KIND, namespace, name)


def not_ready_reason(ctx: Context, kind: str, namespace: str, name: str) -> str | None:
    """Why an ingress path that exists takes no events ("... exists but is not Ready:
    reason: message"), or None when the resource does not exist. Off the hot path: only
    asked once `ingress_target` found no target."""
    res = ctx.get(canonical_kind(kind), namespace, name)
    return None if res is None else not_ready_message(res)
