"""Broker -> a durable topic exchange (routing key = event type), on the RabbitMQ (vhost) its
configuration places it (rabbitmesh/config/brokers.py)."""

from __future__ import annotations

import logging

import aio_pika

from rabbitmesh.config.brokers import BrokerConfigProblem, BrokerSetup, broker_setup
from rabbitmesh.config.knative import class_message
from rabbitmesh.ingress.auth import problem as auth_problem
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address, Condition
from rabbitmesh.resources.eventing import Broker, Trigger

log = logging.getLogger("rabbitmesh.reconciler")

KIND = "Broker"
ORDER = 10
#: Condition saying whether the broker's configuration in force is the one written.
CONFIG_CONDITION = "ConfigApplied"


def triggers_of(ctx: Context, broker: Broker) -> list[Trigger]:
    return [
        r
        for r in ctx.resources.values()
        if isinstance(r, Trigger)
        and r.namespace == broker.namespace
        and r.spec.broker == broker.name
    ]


def setup(ctx: Context, broker: Broker) -> BrokerSetup:
    """The broker's configuration in force, with the placement it keeps while it has
    triggers (RabbitMQ cannot move or retype queues). Raises BrokerConfigProblem."""
    wanted = broker_setup(ctx.effective(), broker)
    had = ctx.placements.get(broker.key)
    if had is not None and not had.same_place(wanted.placement) and triggers_of(ctx, broker):
        wanted.notes.append(
            f"refused: its configuration asks for {wanted.placement.queue_type} queues on "
            f"{wanted.placement.where}, but it has triggers whose queues are "
            f"{had.queue_type} queues on {had.where}, and RabbitMQ cannot change a queue's "
            "type or vhost; delete its triggers (their queued events go with them) to apply it"
        )
        wanted.placement = had
        wanted.refused = True
    return wanted


def _config_condition(broker: Broker, conf: BrokerSetup | None) -> None:
    """`ConfigApplied`: False when a placement change was refused; True with notes about
    configuration that has no effect here; absent when there is nothing to say."""
    conditions = [c for c in broker.status.conditions if c.type != CONFIG_CONDITION]
    if conf is not None and (conf.refused or conf.notes):
        conditions.append(
            Condition.model_validate(
                {
                    "type": CONFIG_CONDITION,
                    "status": "False" if conf.refused else "True",
                    "reason": "BrokerConfigImmutable" if conf.refused else "ConfigApplied",
                    "message": "; ".join(conf.notes),
                }
            )
        )
    broker.status.conditions = conditions


async def reconcile(ctx: Context, broker: Broker) -> None:
    extra = broker.status.model_extra
    assert extra is not None
    try:
        conf = setup(ctx, broker)
    except BrokerConfigProblem as e:
        extra.pop("effectiveConfig", None)
        broker.status.set_ready(False, e.reason, e.message)
        _config_condition(broker, None)
        return
    extra["effectiveConfig"] = conf.status()
    cluster = await ctx.cluster(conf.placement.url)
    exchange = ctx.names.broker_exchange(broker.namespace, broker.name)
    await cluster.topology.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC)
    had = ctx.placements.get(broker.key)
    if had is not None and had.url != conf.placement.url:
        # Moved (it had no triggers): its exchange where it was goes.
        old = await ctx.cluster(had.url)
        await old.topology.delete_exchange(exchange)
    ctx.placements[broker.key] = conf.placement
    broker.status.address = Address(
        url=address_url(ctx.settings.base_url, KIND, broker.namespace, broker.name)
    )
    why = auth_problem(ctx.get, broker)
    if why is not None:  # fail closed: the ingress takes nothing it cannot authenticate
        broker.status.set_ready(False, "IngressTokenSecretMissing", why)
    else:
        broker.status.set_ready(True, "BrokerReady", class_message(conf.broker_class.value))
    _config_condition(broker, conf)


async def finalize(ctx: Context, broker: Broker) -> None:
    exchange = ctx.names.broker_exchange(broker.namespace, broker.name)
    placement = ctx.placements.pop(broker.key, None)
    cluster = await ctx.cluster(placement.url if placement is not None else None)
    await cluster.topology.delete_exchange(exchange)
    # Its bindings went with it: a broker of the same name made later must be bound again.
    for pairs in ctx.bindings.values():
        pairs.difference_update({p for p in pairs if p[0] == exchange})
