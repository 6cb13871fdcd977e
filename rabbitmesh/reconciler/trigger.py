"""Trigger -> a durable queue bound to its broker's exchange, and a consumer delivering it."""

from __future__ import annotations

import logging

from rabbitmesh.dataplane import ExchangeReplier, Target
from rabbitmesh.dispatch.policy import merge_delivery
from rabbitmesh.dispatch.worker import Subscriber
from rabbitmesh.filters import binding_keys, compile_trigger_filter
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.resources.eventing import Broker, Trigger, TriggerSpec

log = logging.getLogger("rabbitmesh.trigger")

KIND = "Trigger"
ORDER = 20


def broker_replier(ctx: Context, broker: Broker, exchange: str, label: str) -> ExchangeReplier:
    """A Trigger's replies go back into its broker with the TTL of the event they answer
    (rabbitmesh/dataplane.py), while the broker exists."""
    key = broker.key
    return ExchangeReplier(
        ctx.publisher,
        Target(exchange, is_broker=True),
        label,
        carry_ttl=True,
        exists=lambda: ctx.resources.get(key) is not None,
    )


def defaults(ctx: Context) -> list[DeliverySpec]:
    """Knative's config-br-defaults: the delivery a broker has when it sets none."""
    url = ctx.settings.default_dead_letter_sink
    return [DeliverySpec(dead_letter_sink=Destination(uri=url))] if url else []


def earlier_bindings(ctx: Context, trigger: Trigger) -> set[tuple[str, str]]:
    """The bindings earlier specs of this trigger made, as the resource store remembers them
    (a filter or broker changed while no rabbitmesh ran). Unbinding one that is not there is
    harmless; keeping a stale one would only let extra events in for the filter to drop."""
    out: set[tuple[str, str]] = set()
    for spec in ctx.history.get(("Trigger", trigger.namespace, trigger.name), []):
        try:
            old = TriggerSpec.model_validate(spec.get("spec", {}))
            attrs = old.filter.attributes if old.filter else {}
            keys = binding_keys(attrs, old.filters)
        except Exception:  # an old spec this version no longer reads: nothing to undo
            continue
        exchange = ctx.names.broker_exchange(trigger.namespace, old.broker)
        out.update((exchange, k) for k in keys)
    return out


async def reconcile(ctx: Context, trigger: Trigger) -> None:
    ns, spec = trigger.namespace, trigger.spec
    broker = ctx.get("Broker", ns, spec.broker)
    if not isinstance(broker, Broker):
        trigger.status.set_ready(
            False,
            "BrokerDoesNotExist",
            f"Broker {spec.broker!r} does not exist in namespace {ns!r}",
        )
        return
    exchange = ctx.names.broker_exchange(ns, broker.name)
    queue = ctx.names.trigger_queue(ns, trigger.name)
    attrs = spec.filter.attributes if spec.filter else {}
    await ctx.topology.declare_delivery_queue(queue)
    if queue not in ctx.bindings:  # a fresh process: also undo what earlier specs bound
        ctx.bindings[queue] = earlier_bindings(ctx, trigger)
    await ctx.bind_exactly(queue, {(exchange, k) for k in binding_keys(attrs, spec.filters)})

    url = ctx.resolve(spec.subscriber, ns)
    policy = ctx.policy(merge_delivery(spec.delivery, broker.spec.delivery, *defaults(ctx)), ns)
    await ctx.run_queue(
        queue,
        Subscriber(
            name=f"trigger={ns}/{trigger.name}",
            namespace=ns,
            url=url,
            policy=policy,
            filter=compile_trigger_filter(attrs, spec.filters),
            on_reply=broker_replier(ctx, broker, exchange, f"trigger={ns}/{trigger.name}"),
            reply_must_be_event=True,
        ),
    )
    extra = trigger.status.model_extra
    assert extra is not None
    extra["subscriberUri"] = url
    if policy.dead_letter_url:
        extra["deadLetterSinkUri"] = policy.dead_letter_url
    else:
        extra.pop("deadLetterSinkUri", None)
    trigger.status.set_ready(True, "TriggerReady", "")


async def finalize(ctx: Context, trigger: Trigger) -> None:
    await ctx.delete_queue(ctx.names.trigger_queue(trigger.namespace, trigger.name))
