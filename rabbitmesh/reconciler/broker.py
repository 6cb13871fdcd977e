"""Broker -> a durable topic exchange (routing key = event type)."""

from __future__ import annotations

import aio_pika

from rabbitmesh.ingress.auth import problem as auth_problem
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.eventing import Broker

KIND = "Broker"
ORDER = 10


async def reconcile(ctx: Context, broker: Broker) -> None:
    await ctx.topology.declare_exchange(
        ctx.names.broker_exchange(broker.namespace, broker.name), aio_pika.ExchangeType.TOPIC
    )
    broker.status.address = Address(
        url=address_url(ctx.settings.base_url, KIND, broker.namespace, broker.name)
    )
    why = auth_problem(ctx.get, broker)
    if why is not None:  # fail closed: the ingress takes nothing it cannot authenticate
        broker.status.set_ready(False, "IngressTokenSecretMissing", why)
        return
    broker.status.set_ready(True, "BrokerReady", "")


async def finalize(ctx: Context, broker: Broker) -> None:
    exchange = ctx.names.broker_exchange(broker.namespace, broker.name)
    await ctx.topology.delete_exchange(exchange)
    # Its bindings went with it: a broker of the same name made later must be bound again.
    for pairs in ctx.bindings.values():
        pairs.difference_update({p for p in pairs if p[0] == exchange})
