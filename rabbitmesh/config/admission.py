"""Refusing, at write time, a change RabbitMQ cannot carry out: a broker with triggers moved
to another queue type, vhost or RabbitMQ (its queues cannot be retyped or moved, and the
events in them would stay behind). eventing-rabbitmq's webhook refuses the same change.

The admin API asks before it writes (422 naming the field); the config dir cannot be asked,
so the reconciler refuses the same change there too (the broker keeps its placement,
condition `ConfigApplied: False`: rabbitmesh/reconciler/broker.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rabbitmesh.config.brokers import BrokerConfigProblem, Placement, broker_setup
from rabbitmesh.config.effective import Effective
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.eventing import Broker, Trigger
from rabbitmesh.settings import Settings

Key = tuple[str, str, str]
#: Kinds whose write can move a broker.
MOVES_BROKERS = frozenset({"Broker", "RabbitmqBrokerConfig", "ConfigMap", "Secret"})


def check_placements(
    settings: Settings,
    resources: Mapping[Key, Resource],
    placements: Mapping[Key, Placement],
    res: Resource,
) -> None:
    """FieldError when writing `res` would move a broker that has triggers."""
    if res.KIND not in MOVES_BROKERS or not placements:
        return
    key = (res.KIND, res.namespace if res.NAMESPACED else "", res.name)
    get: Callable[[str, str, str], Resource | None] = lambda k, ns, n: (  # noqa: E731
        res if (k, ns, n) == key else resources.get((k, ns, n))
    )
    eff = Effective(settings, get)
    brokers = [key] if res.KIND == "Broker" else list(placements)
    used: set[tuple[str, str]] | None = None  # (namespace, broker) of every trigger
    for broker_key in brokers:
        had = placements.get(broker_key)
        broker = get(*broker_key)
        if had is None or not isinstance(broker, Broker):
            continue
        try:
            wanted = broker_setup(eff, broker).placement
        except BrokerConfigProblem:
            continue  # not a move: the broker will say what is wrong
        if wanted.same_place(had):
            continue
        if used is None:  # only once a move is found: a scan of every resource
            used = {
                (t.namespace, t.spec.broker) for t in resources.values() if isinstance(t, Trigger)
            }
        if (broker.namespace, broker.name) not in used:
            continue
        raise FieldError(
            _field(res, had, wanted),
            f"would move Broker {broker.namespace}/{broker.name} from {had.queue_type} queues "
            f"on {had.where} to {wanted.queue_type} queues on {wanted.where}, but it has "
            "triggers: RabbitMQ cannot change a queue's type or move it with its events. "
            "Delete its triggers first (their queued events go with them), or use a new broker",
        )


def check_cross_namespace(
    settings: Settings, resources: Mapping[Key, Resource], res: Resource
) -> None:
    """FieldError for a Subscription naming a channel of another namespace while
    config-features' cross-namespace-event-links is not enabled (as Knative's webhook)."""
    if res.KIND != "Subscription":
        return
    ref = getattr(getattr(res, "spec", None), "channel", None)
    cns = getattr(ref, "namespace", None)
    if not cns or cns == res.namespace:
        return
    eff = Effective(settings, lambda k, ns, n: resources.get((k, ns, n)))
    if not eff.enabled("cross-namespace-event-links"):
        raise FieldError(
            "spec.channel.namespace",
            "a subscription must be in its channel's namespace unless config-features "
            "cross-namespace-event-links is enabled",
        )


def _field(res: Resource, had: Placement, wanted: Placement) -> str:
    if res.KIND == "RabbitmqBrokerConfig":
        if had.queue_type != wanted.queue_type:
            return "spec.queueType"
        return (
            "spec.vhost"
            if "vhost" in wanted.where or "vhost" in had.where
            else ("spec.rabbitmqClusterReference")
        )
    if res.KIND == "Broker":
        return "spec.config"
    if res.KIND == "Secret":
        return "data.uri"
    return "data.default-br-config"
