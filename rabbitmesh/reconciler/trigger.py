"""Trigger -> a durable queue bound to its broker's exchange, and a consumer delivering it."""

from __future__ import annotations

import logging
from typing import Any

import aio_pika

from rabbitmesh.amqp.clusters import Cluster
from rabbitmesh.dataplane import ExchangeReplier, Target
from rabbitmesh.dispatch.policy import merge_delivery
from rabbitmesh.dispatch.worker import Subscriber
from rabbitmesh.filters import binding_keys, compile_trigger_filter
from rabbitmesh.reconciler import ordering
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.resources.eventing import Broker, Trigger, TriggerSpec
from rabbitmesh.resources.ordering import partitions

log = logging.getLogger("rabbitmesh.trigger")

KIND = "Trigger"
ORDER = 20


def broker_replier(
    ctx: Context, broker: Broker, exchange: str, label: str, cluster: Cluster
) -> ExchangeReplier:
    """A Trigger's replies go back into its broker with the TTL of the event they answer
    (rabbitmesh/dataplane.py), while the broker exists; on the broker's RabbitMQ."""
    key = broker.key
    return ExchangeReplier(
        cluster.publisher,
        Target(exchange, is_broker=True),
        label,
        carry_ttl=True,
        exists=lambda: ctx.resources.get(key) is not None,
    )


def defaults(ctx: Context, broker: Broker | None = None) -> list[DeliverySpec]:
    """Knative's config-br-defaults: the delivery a broker has when it sets none; the
    ConfigMap's first, then RABBITMESH_DEFAULT_DEAD_LETTER_SINK (docs/configuration.md)."""
    out: list[DeliverySpec] = []
    if broker is not None:
        eff = ctx.effective()
        from_map = eff.broker_delivery(broker.namespace, eff.broker_class(broker).value).value
        if from_map is not None:
            out.append(from_map)
    url = ctx.settings.default_dead_letter_sink
    if url:
        out.append(DeliverySpec(dead_letter_sink=Destination(uri=url)))
    return out


def insecure_urls(ctx: Context, *urls: str | None) -> list[str]:
    """With config-features transport-encryption: strict, the URLs that are not https."""
    if ctx.effective().feature("transport-encryption").value != "strict":
        return []
    return [u for u in urls if u and not u.lower().startswith("https://")]


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
        old_ns = (old.broker_ref.namespace if old.broker_ref else None) or trigger.namespace
        exchange = ctx.names.broker_exchange(old_ns, old.broker)
        out.update((exchange, k) for k in keys)
    return out


async def reconcile(ctx: Context, trigger: Trigger) -> None:
    ns, spec = trigger.namespace, trigger.spec
    broker_ns = trigger.broker_namespace()
    if broker_ns != ns and not ctx.settings.cross_namespace_event_links:
        # Nothing is bound: a queue already bound from an allowed time is left unconsumed.
        await ctx.stop_queue(ctx.names.trigger_queue(ns, trigger.name))
        trigger.status.set_ready(
            False,
            "CrossNamespaceRefNotAllowed",
            f"spec.brokerRef names namespace {broker_ns!r}; references to other namespaces "
            "need RABBITMESH_CROSS_NAMESPACE_EVENT_LINKS=true (Knative's "
            "cross-namespace-event-links)",
        )
        return
    broker = ctx.get("Broker", broker_ns, spec.broker)
    if not isinstance(broker, Broker):
        trigger.status.set_ready(
            False,
            "BrokerDoesNotExist",
            f"Broker {spec.broker!r} does not exist in namespace {broker_ns!r}",
        )
        return
    placement = ctx.placements.get(broker.key)
    if placement is None:  # its configuration is broken: its queues' place is unknown
        trigger.status.set_ready(
            False,
            "BrokerNotReady",
            f"Broker {spec.broker!r} is not Ready: {_ready_text(broker)}",
        )
        return
    cluster = await ctx.cluster(placement.url)
    exchange = ctx.names.broker_exchange(broker_ns, broker.name)
    queue = ctx.names.trigger_queue(ns, trigger.name)
    attrs = spec.filter.attributes if spec.filter else {}
    delivery = merge_delivery(spec.delivery, broker.spec.delivery, *defaults(ctx, broker))
    try:
        await ctx.declare_delivery_queue(
            queue, cluster, placement.queue_type, delivery.dead_letter_sink is not None
        )
    except aio_pika.exceptions.ChannelPreconditionFailed as e:
        if "x-queue-type" not in str(e):
            raise  # other arguments (set by hand?): ReconcileFailed, retried
        trigger.status.set_ready(
            False,
            "QueueTypeImmutable",
            f"its queue {queue} exists with other arguments than a {placement.queue_type} "
            f"queue ({e}); RabbitMQ cannot change a queue's type: keep the broker's queueType, "
            "or delete and re-create the trigger (its queued events go with it)",
        )
        return
    if queue not in ctx.bindings:  # a fresh process: also undo what earlier specs bound
        ctx.bindings[queue] = earlier_bindings(ctx, trigger)
    await ctx.bind_exactly(queue, {(exchange, k) for k in binding_keys(attrs, spec.filters)})

    url = ctx.resolve(spec.subscriber, ns)
    policy = ctx.policy(delivery, ns)
    insecure = insecure_urls(ctx, url, policy.dead_letter_url)
    if insecure:
        await ctx.stop_queue(queue)  # events wait in RabbitMQ until it may deliver
        await ordering.stop_splitter(ctx, queue)  # and an ordered trigger's partitions too
        for i in range(ctx.partitions.get(queue, 0)):
            await ctx.stop_queue(ctx.names.partition_queue(queue, i))
        trigger.status.set_ready(
            False,
            "TransportEncryptionStrict",
            "config-features transport-encryption is strict: not an https URL: "
            + ", ".join(insecure),
        )
        return
    parallelism = trigger.parallelism()
    concurrency = parallelism[0] if parallelism else ctx.settings.concurrency
    await ordering.deliver(
        ctx,
        queue,
        Subscriber(
            name=f"trigger={ns}/{trigger.name}",
            namespace=ns,
            url=url,
            policy=policy,
            filter=compile_trigger_filter(attrs, spec.filters),
            on_reply=broker_replier(ctx, broker, exchange, f"trigger={ns}/{trigger.name}", cluster),
            reply_must_be_event=True,
            auth=ctx.sender_auth(trigger, spec.subscriber, ns),
            dead_letter_auth=(
                ctx.sender_auth(trigger, delivery.dead_letter_sink, ns)
                if delivery.dead_letter_sink is not None
                else None
            ),
        ),
        partitions(trigger),
        trigger.key,
        concurrency=concurrency,
        cluster=cluster,
    )
    extra = trigger.status.model_extra
    assert extra is not None
    extra["effectiveConfig"] = _effective(ctx, parallelism, concurrency, placement, broker)
    extra["subscriberUri"] = url
    if policy.dead_letter_url:
        extra["deadLetterSinkUri"] = policy.dead_letter_url
    else:
        extra.pop("deadLetterSinkUri", None)
    trigger.status.set_ready(True, "TriggerReady", "")


def _ready_text(res: Broker) -> str:
    c = next((c for c in res.status.conditions if c.type == "Ready"), None)
    if c is None:
        return "not reconciled yet"
    return ": ".join(p for p in (c.reason, c.message) if p) or c.status


def _effective(
    ctx: Context,
    parallelism: tuple[int, str] | None,
    concurrency: int,
    placement: Any,
    broker: Broker,
) -> dict[str, Any]:
    if parallelism is not None:
        source = f"annotation {parallelism[1]}"
    elif "concurrency" in ctx.settings.model_fields_set:
        source = "RABBITMESH_CONCURRENCY"
    else:
        source = "built-in default"
    where = f"Broker {broker.namespace}/{broker.name}"
    return {
        "parallelism": {"value": concurrency, "source": source},
        "queueType": {"value": placement.queue_type, "source": where},
        "rabbitmq": {"value": placement.where, "source": where},
    }


async def finalize(ctx: Context, trigger: Trigger) -> None:
    queue = ctx.names.trigger_queue(trigger.namespace, trigger.name)
    await ordering.delete_partitions(
        ctx, queue, max(partitions(trigger) or 0, ordering.historic_partitions(ctx, trigger.key))
    )
    await ctx.delete_queue(queue)
