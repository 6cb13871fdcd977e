"""The addressables rabbitmesh hosts itself, and the exchange behind each one's ingress.

The HTTP ingress publishes to these exchanges, and so do replies whose destination is a
hosted resource: straight into RabbitMQ, confirmed, without an HTTP round trip.
"""

from __future__ import annotations

from dataclasses import replace

import aio_pika

from rabbitmesh.amqp.names import Names
from rabbitmesh.ingress.auth import tokens
from rabbitmesh.ingress.handlers import Target
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.flows import Parallel, Sequence
from rabbitmesh.resources.registry import canonical_kind


def exchange_of(names: Names, kind: str, namespace: str, name: str) -> Target | None:
    """The ingress exchange of a hosted kind (InMemoryChannel counts as Channel), else None."""
    kind = canonical_kind(kind)
    if kind == "Broker":
        return Target(names.broker_exchange(namespace, name), is_broker=True)
    if kind == "Channel":
        return Target(names.channel_exchange(namespace, name), is_broker=False)
    if kind == "Sequence":
        first = Sequence.channel_name(name, 0)
        return Target(names.flow_exchange("sequence", namespace, first), is_broker=False)
    if kind == "Parallel":
        ingress = Parallel.ingress_channel_name(name)
        return Target(names.flow_exchange("parallel", namespace, ingress), is_broker=False)
    if kind == "JobSink":  # a run is recorded once its queue has the event
        return Target(names.jobsink_exchange(namespace, name), is_broker=False)
    return None


def exchange_type(target: Target) -> aio_pika.ExchangeType:
    """Brokers route on the event type; every channel (and so every flow) is a fanout."""
    return aio_pika.ExchangeType.TOPIC if target.is_broker else aio_pika.ExchangeType.FANOUT


def ingress_target(ctx: Context, kind: str, namespace: str, name: str) -> Target | None:
    """Where the ingress path of this resource publishes; None while it does not exist or
    its exchange is not declared yet (a Broker: until it is Ready)."""
    res = ctx.get(canonical_kind(kind), namespace, name)
    if res is None:
        return None
    if isinstance(res, Broker):
        if res.status.ready != "True":
            return None
        target = exchange_of(ctx.names, res.KIND, namespace, name)
        accepted = tokens(ctx.get, res)
        return target if target is None or accepted is None else replace(target, tokens=accepted)
    if res.status.address is None:
        return None
    if res.KIND == "JobSink":
        if res.status.ready != "True":
            return None  # e.g. its runtime is not allowed: take no runs that cannot start
        target = exchange_of(ctx.names, res.KIND, namespace, name)
        accepted = tokens(ctx.get, res)  # each event starts a run: it may need a token
        return target if target is None or accepted is None else replace(target, tokens=accepted)
    return exchange_of(ctx.names, res.KIND, namespace, name)


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
