"""The store's entries -> the desired set the controller reconciles.

Besides the stored resources, the set holds what Knative's controllers would create on
their own, derived here on every replica alike instead of being written anywhere:
- a Broker `default` in each Namespace labelled `eventing.knative.dev/injection: enabled`
  (owned by the Namespace: it goes when the label or the Namespace goes);
- an EventType for each (type, source) a source declares (owned by the source).
An explicitly stored resource of the same name wins over a derived one. Stored resources
created automatically (origin `auto`, the EventTypes seen at ingress) whose owner is gone are
left out, as Kubernetes' garbage collector would delete them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from rabbitmesh.resources.base import ObjectMeta, Resource
from rabbitmesh.resources.core import INJECTED_LABEL, Namespace
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.eventtypes import EventType
from rabbitmesh.resources.loader import ManifestError
from rabbitmesh.store.dependencies import DependencyIndex
from rabbitmesh.store.manifests import from_entry
from rabbitmesh.store.state import Entry, Key

log = logging.getLogger("rabbitmesh.reconciler")

DEFAULT_BROKER = "default"


def owner_reference(owner: Resource) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.KIND,
        "name": owner.name,
        "uid": owner.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def dns_name(text: str) -> str:
    """A DNS-1123 subdomain made of `text`, as Knative's ToDNS1123Subdomain does."""
    out = "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower())
    return out.strip("-.")[:253].strip("-.")


def event_type_name(owner: str, namespace: str, type_: str, source: str) -> str:
    """Knative's generated EventType name: `et-{owner}-{md5(type, source, namespace, owner)}`."""
    digest = hashlib.md5((type_ + source + namespace + owner).encode()).hexdigest()  # noqa: S324
    return dns_name(f"et-{owner}-{digest}")


def injected_broker(ns: Namespace) -> Broker:
    return Broker(
        api_version="eventing.knative.dev/v1",
        kind="Broker",
        metadata=ObjectMeta(
            name=DEFAULT_BROKER,
            namespace=ns.name,
            labels={INJECTED_LABEL: "true"},
            owner_references=[owner_reference(ns)],
            creation_timestamp=ns.metadata.creation_timestamp,
        ),
    )


def declared_event_type(source: Resource, type_: str, ce_source: str) -> EventType:
    ref = getattr(getattr(source, "spec", None), "sink", None)
    reference = ref.ref.dump() if ref is not None and ref.ref is not None else None
    attributes = [
        {"name": "type", "value": type_, "required": True},
        {"name": "source", "value": ce_source, "required": bool(ce_source)},
        {"name": "specversion", "value": "1.0", "required": True},
        {"name": "id", "required": True},
    ]
    return EventType.model_validate(
        {
            "apiVersion": "eventing.knative.dev/v1beta3",
            "kind": "EventType",
            "metadata": {
                "name": event_type_name(source.name, source.namespace, type_, ce_source),
                "namespace": source.namespace,
                "ownerReferences": [owner_reference(source)],
                "creationTimestamp": source.metadata.creation_timestamp,
            },
            "spec": {
                "reference": reference,
                "description": f"Event type declared by {source.KIND} {source.name}",
                "attributes": attributes,
            },
        }
    )


class Desired:
    """The desired set, kept up to date one changed store key at a time.

    `update` re-reads only the entries whose keys changed, re-derives only what those
    resources derive, and returns the keys whose desired resource is now a different object
    (added, replaced or gone). An unchanged entry keeps its parsed resource object, so its
    status (kept on the object by the controller) survives. `dependencies` says whose
    reconcile reads which key (rabbitmesh/store/dependencies.py).
    """

    def __init__(self) -> None:
        self._entries: dict[Key, Entry] = {}
        self._stored: dict[Key, Resource] = {}
        #: owner key -> (token, {derived key: resource}) of what it derives.
        self._derived: dict[Key, tuple[Any, dict[Key, Resource]]] = {}
        #: derived key -> the owners deriving it (usually one).
        self._derivers: dict[Key, set[Key]] = {}
        #: owner key -> the stored `auto` entries it owns (garbage when it goes).
        self._auto: dict[Key, set[Key]] = {}
        #: The desired set itself.
        self.current: dict[Key, Resource] = {}
        #: (kind, namespace, name) -> earlier specs (newest last), for reconcilers that must
        #: undo what an earlier spec did (a Trigger's bindings).
        self.history: dict[Key, list[dict[str, Any]]] = {}
        self.dependencies = DependencyIndex()

    @property
    def derived_keys(self) -> set[Key]:
        """Keys of resources derived here rather than stored: read-only through the API."""
        return set(self._derivers)

    def is_derived(self, key: Key) -> bool:
        return key in self._derivers

    def build(self, entries: Iterable[Entry]) -> list[Resource]:
        """The whole desired set for these entries (as the only ones)."""
        by_key = {e.key: e for e in entries}
        self.update(by_key, set(by_key) | set(self._entries))
        return list(self.current.values())

    def update(self, entries: Mapping[Key, Entry], keys: Iterable[Key]) -> set[Key]:
        """Take in the changes of `keys` (read from `entries`); the desired keys changed."""
        touched: set[Key] = set()
        for key in keys:
            touched.add(key)
            entry = entries.get(key)
            res = self._parse(entry) if entry is not None else None  # cached when unchanged
            old = self._entries.pop(key, None)
            self._stored.pop(key, None)
            self.history.pop(key, None)
            if old is not None and old.origin == "auto":
                for owner in old.owners():
                    owned = self._auto.get(owner)
                    if owned is not None:
                        owned.discard(key)
                        if not owned:
                            del self._auto[owner]
            if entry is not None and res is not None:
                self._entries[key] = entry
                self._stored[key] = res
                if entry.history:
                    self.history[key] = entry.history
                if entry.origin == "auto":
                    for owner in entry.owners():
                        self._auto.setdefault(owner, set()).add(key)
            touched |= self._rederive(key, res)
        # Auto entries follow their owners' existence.
        for key in list(touched):
            touched |= self._auto.get(key, set())
        changed: set[Key] = set()
        for key in sorted(touched, key=lambda k: k in self._entries and self._is_auto(k)):
            res = self._resolve(key)
            before = self.current.get(key)
            if res is None:
                self.current.pop(key, None)
            else:
                self.current[key] = res
            if res is not before:
                changed.add(key)
                self.dependencies.set(key, res)
        return changed

    def _is_auto(self, key: Key) -> bool:
        return self._entries[key].origin == "auto"

    def _resolve(self, key: Key) -> Resource | None:
        """What `key` is in the desired set: stored wins over derived; orphaned auto goes."""
        stored = self._stored.get(key)
        if stored is not None:
            entry = self._entries[key]
            if entry.origin == "auto" and any(
                owner not in self._stored and owner not in self._derivers
                for owner in entry.owners()
            ):
                return None  # its owner is gone: garbage
            return stored
        for owner in sorted(self._derivers.get(key, ())):
            return self._derived[owner][1][key]
        return None

    def _parse(self, entry: Entry) -> Resource | None:
        cached, old = self._stored.get(entry.key), self._entries.get(entry.key)
        if (
            cached is not None
            and old is not None
            and old.resource_version == entry.resource_version
        ):
            return cached
        try:
            return from_entry(entry)
        except ManifestError as e:
            log.error("stored %s %s/%s skipped: %s", entry.kind, entry.namespace, entry.name, e)
            return None

    def _rederive(self, owner: Key, res: Resource | None) -> set[Key]:
        """Re-derive what `owner` (now `res`) derives; the derived keys touched."""
        made: dict[Key, tuple[Any, Any]] = {}
        if res is not None:
            if isinstance(res, Namespace) and res.injects_broker:
                made[("Broker", res.name, DEFAULT_BROKER)] = (
                    ("ns", res.metadata.resource_version),
                    lambda ns=res: injected_broker(ns),
                )
            for type_, ce_source in res.declared_event_types():
                et_name = event_type_name(res.name, res.namespace, type_, ce_source)
                made[("EventType", res.namespace, et_name)] = (
                    ("src", res.metadata.resource_version, type_, ce_source),
                    lambda r=res, t=type_, s=ce_source: declared_event_type(r, t, s),
                )
        token = {k: t for k, (t, _) in made.items()}
        old_token, old = self._derived.pop(owner, (None, {}))
        if made and token == old_token:
            self._derived[owner] = (old_token, old)
            return set()
        new = {k: make() for k, (_, make) in made.items()}
        if new:
            self._derived[owner] = (token, new)
        for key in old.keys() - new.keys():
            derivers = self._derivers.get(key, set())
            derivers.discard(owner)
            if not derivers:
                self._derivers.pop(key, None)
        for key in new:
            self._derivers.setdefault(key, set()).add(owner)
        return set(old) | set(new)
