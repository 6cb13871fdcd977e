"""Which resources a resource's reconcile reads, so a change reconciles its dependents too.

A reconciler reads other resources only through `ctx.get`: a Trigger its Broker, a
Subscription its Channel, anything with a `ref` (subscriber, reply, sink, an EventType's
reference) the resource it names, a `secretKeyRef` its Secret. This module finds those
references in a resource's manifest, so the index cannot forget a field a new kind adds as
long as it is shaped like Kubernetes' references. Two reads are not in the manifest's shape:
a Broker's ingress-token Secret (an annotation) and a ContainerSource's Secrets (any in its
namespace); those kinds depend on every Secret of their namespace, written `(Secret, ns, *)`.

Configuration is read without a reference too (issue 20): every Broker and Trigger reads
config-br-defaults, every Channel, Sequence and Parallel default-ch-webhook, everything that
delivers config-features (all in knative-eventing). A change of configuration reaches further
than its direct readers (`affected`): a RabbitmqBrokerConfig (or its connection Secret) moves
a Broker and so its Triggers' queues; a ConfigMap reaches a Broker's Triggers and a Channel's
Subscriptions, which inherit their delivery. The control plane narrows a defaults ConfigMap's
change to the namespaces whose defaults it changed (rabbitmesh/config/knative.py).

A missed edge is not a lasting error: the periodic full resync (RABBITMESH_RESYNC_INTERVAL)
reconciles everything again.
"""

from __future__ import annotations

import builtins
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from rabbitmesh.auth.policies import TARGET_KINDS
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.registry import canonical_kind
from rabbitmesh.store.manifests import to_manifest
from rabbitmesh.store.state import Key

ANY = "*"
SYSTEM_NS = "knative-eventing"
BR_DEFAULTS: Key = ("ConfigMap", SYSTEM_NS, "config-br-defaults")
CH_DEFAULTS: Key = ("ConfigMap", SYSTEM_NS, "default-ch-webhook")
FEATURES: Key = ("ConfigMap", SYSTEM_NS, "config-features")
#: Which ConfigMaps each kind reads without naming them.
READS_CONFIG: dict[str, tuple[Key, ...]] = {
    "Broker": (BR_DEFAULTS,),
    "Trigger": (BR_DEFAULTS, FEATURES),
    "Channel": (CH_DEFAULTS,),
    "Subscription": (FEATURES,),
    "Sequence": (CH_DEFAULTS, FEATURES),
    "Parallel": (CH_DEFAULTS, FEATURES),
}
#: Past a configuration change's direct readers, the edges it follows (reader -> its users).
FOLLOW = frozenset(
    {("RabbitmqBrokerConfig", "Broker"), ("Broker", "Trigger"), ("Channel", "Subscription")}
)
CONFIG_KINDS = frozenset({"ConfigMap", "RabbitmqBrokerConfig"})
#: Kinds whose reconcile reads Secrets it does not name in a reference.
READS_ANY_SECRET = frozenset(
    {
        "Broker",
        "PingSource",
        "ContainerSource",
        "ApiServerSource",
        "SinkBinding",
        "GitLabSource",
        # connectionSecret is a {name} reference, not a secretKeyRef
        "RabbitmqSource",
        "RabbitmqSink",
    }
)


def _refs_in(node: Any, namespace: str) -> Iterator[Key]:
    if isinstance(node, dict):
        kind, name = node.get("kind"), node.get("name")
        if isinstance(kind, str) and isinstance(name, str) and "apiVersion" in node:
            ns = node.get("namespace") or namespace
            yield (canonical_kind(kind), ns if kind != "Namespace" else "", name)
        secret = node.get("secretKeyRef")
        if isinstance(secret, dict) and isinstance(secret.get("name"), str):
            yield ("Secret", namespace, secret["name"])
        for value in node.values():
            yield from _refs_in(value, namespace)
    elif isinstance(node, list):
        for value in node:
            yield from _refs_in(value, namespace)


def references(res: Resource) -> set[Key]:
    """The keys `res`'s reconcile may read (ownerReferences excluded: owners are derived)."""
    ns = res.namespace if res.NAMESPACED else ""
    manifest = to_manifest(res)
    spec = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    out = set(_refs_in(spec, ns))
    if res.KIND == "Trigger":
        broker = getattr(getattr(res, "spec", None), "broker", None)
        if isinstance(broker, str):
            out.add(("Broker", res.broker_namespace(), broker))  # type: ignore[attr-defined]
    if res.KIND == "EventType":  # v1beta2's spec.broker is a name, not a reference
        ref = getattr(res, "ref", None)
        if ref is not None:
            out.add((canonical_kind(ref.kind), ref.namespace or ns, ref.name))
    if res.KIND == "EventPolicy":  # status.targets: any target of its namespace may match
        out.update((kind, ns, ANY) for kind in TARGET_KINDS)
    if res.KIND in READS_ANY_SECRET:
        out.add(("Secret", ns, ANY))
    out.update(READS_CONFIG.get(res.KIND, ()))
    if res.KIND == "RabbitmqBrokerConfig":
        cluster = getattr(getattr(res, "spec", None), "rabbitmq_cluster_reference", None)
        secret = getattr(cluster, "connection_secret", None)
        if secret is not None:
            out.add(("Secret", ns, secret.name))
    out.discard(_key(res))
    return out


def _key(res: Resource) -> Key:
    return (res.KIND, res.namespace if res.NAMESPACED else "", res.name)


class DependencyIndex:
    """target key -> the keys whose reconcile reads it."""

    def __init__(self) -> None:
        self._dependents: dict[Key, set[Key]] = defaultdict(set)
        self._refs: dict[Key, set[Key]] = {}

    def set(self, key: Key, res: Resource | None) -> None:
        """Record what `key` (now `res`, or gone with None) reads."""
        new = references(res) if res is not None else set()
        old = self._refs.pop(key, set())
        for target in old - new:
            users = self._dependents.get(target)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._dependents[target]
        for target in new - old:
            self._dependents[target].add(key)
        if new:
            self._refs[key] = new

    def dependents(self, key: Key) -> builtins.set[Key]:  # `set` here is the method
        kind, ns, _ = key
        out = set(self._dependents.get(key, ()))
        out |= self._dependents.get((kind, ns, ANY), set())
        return out

    def affected(self, key: Key) -> builtins.set[Key]:
        """The keys to reconcile when `key` changed: its dependents, and for configuration
        the users of those along FOLLOW (a Broker's Triggers, a Channel's Subscriptions)."""
        direct = self.dependents(key)
        out = set(direct)
        frontier = [d for d in direct if key[0] in CONFIG_KINDS or d[0] == "RabbitmqBrokerConfig"]
        while frontier:
            k = frontier.pop()
            for d in self.dependents(k):
                if (k[0], d[0]) in FOLLOW and d not in out:
                    out.add(d)
                    frontier.append(d)
        return out

    def __len__(self) -> int:
        return len(self._refs)
