"""Trigger -> a durable queue bound to its broker's exchange, and a consumer delivering it."""

from __future__ import annotations

import logging

from rabbitmesh.amqp.messages import to_message
from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.dispatch.policy import merge_delivery
from rabbitmesh.dispatch.worker import Subscriber, now_rfc3339
from rabbitmesh.filters import binding_keys, compile_trigger_filter
from rabbitmesh.filters.bindings import routing_key_for_type
from rabbitmesh.reconciler import ordering
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.resources.eventing import Broker, Trigger, TriggerSpec
from rabbitmesh.resources.ordering import partitions

log = logging.getLogger("rabbitmesh.trigger")

KIND = "Trigger"
ORDER = 20
DEFAULT_TTL = 255


def broker_ttl(event: CloudEvent) -> int:
    """The event's knativebrokerttl, the default when absent or unreadable."""
    try:
        return int(event.attributes.get("knativebrokerttl", DEFAULT_TTL))
    except (TypeError, ValueError):
        return DEFAULT_TTL


class BrokerReplier:
    """Publishes a subscriber's reply back into the broker, one TTL step lower."""

    def __init__(self, ctx: Context, broker: Broker, exchange: str, trigger: str) -> None:
        self.ctx = ctx
        self.broker_key = broker.key
        self.exchange = exchange
        self.trigger = trigger

    async def __call__(self, original: CloudEvent, reply: CloudEvent) -> None:
        if self.ctx.resources.get(self.broker_key) is None:
            # Publishing to a deleted exchange would close the shared confirm channel.
            log.warning(
                "reply %s to event %s via %s dropped: its broker was deleted",
                reply.id,
                original.id,
                self.trigger,
            )
            return
        ttl = broker_ttl(original) - 1
        if ttl <= 0:
            log.warning(
                "reply %s to event %s via %s dropped: knativebrokerttl exhausted (reply loop?)",
                reply.id,
                original.id,
                self.trigger,
            )
            return
        reply.attributes["knativebrokerttl"] = ttl
        reply.trace = reply.trace or original.trace  # the reply continues the event's trace
        reply.attributes["knativearrivaltime"] = now_rfc3339()
        # PublishFailed propagates: the worker then requeues the original event;
        # UnpublishableMessage too: the worker counts a failed delivery (retry, dead letter).
        await self.ctx.publisher.publish(
            self.exchange, routing_key_for_type(reply.type), to_message(reply)
        )


def defaults(ctx: Context) -> list[DeliverySpec]:
    """Knative's config-br-defaults: the delivery a broker has when it sets none."""
    url = ctx.settings.default_dead_letter_sink
    return [DeliverySpec(deadLetterSink=Destination(uri=url))] if url else []


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
    await ordering.deliver(
        ctx,
        queue,
        Subscriber(
            name=f"trigger={ns}/{trigger.name}",
            namespace=ns,
            url=url,
            policy=policy,
            filter=compile_trigger_filter(attrs, spec.filters),
            on_reply=BrokerReplier(ctx, broker, exchange, f"trigger={ns}/{trigger.name}"),
            reply_must_be_event=True,
        ),
        partitions(trigger),
        trigger.key,
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
    queue = ctx.names.trigger_queue(trigger.namespace, trigger.name)
    await ordering.delete_partitions(
        ctx, queue, max(partitions(trigger) or 0, ordering.historic_partitions(ctx, trigger.key))
    )
    await ctx.delete_queue(queue)
