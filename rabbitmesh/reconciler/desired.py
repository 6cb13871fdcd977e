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
from collections.abc import Iterable
from typing import Any

from rabbitmesh.resources.base import ObjectMeta, Resource
from rabbitmesh.resources.core import INJECTED_LABEL, Namespace
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.eventtypes import EventType
from rabbitmesh.resources.loader import ManifestError
from rabbitmesh.store.manifests import from_entry, key_of
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
        apiVersion="eventing.knative.dev/v1",
        kind="Broker",
        metadata=ObjectMeta(
            name=DEFAULT_BROKER,
            namespace=ns.name,
            labels={INJECTED_LABEL: "true"},
            ownerReferences=[owner_reference(ns)],
            creationTimestamp=ns.metadata.creation_timestamp,
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
    """Builds the desired set, re-using the parsed resource of every unchanged entry."""

    def __init__(self) -> None:
        self._parsed: dict[Key, tuple[int, Resource]] = {}
        self._derived: dict[Key, tuple[Any, Resource]] = {}
        #: (kind, namespace, name) -> earlier specs (newest last), for reconcilers that must
        #: undo what an earlier spec did (a Trigger's bindings).
        self.history: dict[Key, list[dict[str, Any]]] = {}
        #: Keys of resources derived here rather than stored: read-only through the API.
        self.derived_keys: set[Key] = set()

    def build(self, entries: Iterable[Entry]) -> list[Resource]:
        out: dict[Key, Resource] = {}
        auto: dict[Key, Entry] = {}
        parsed: dict[Key, tuple[int, Resource]] = {}
        history: dict[Key, list[dict[str, Any]]] = {}
        for entry in entries:
            res = self._parse(entry)
            if res is None:
                continue
            parsed[entry.key] = (entry.resource_version, res)
            out[entry.key] = res
            if entry.history:
                history[entry.key] = entry.history
            if entry.origin == "auto":
                auto[entry.key] = entry
        self._parsed, self.history = parsed, history
        derived = self._derive(out)
        self.derived_keys = set(derived)
        for key, res in derived.items():
            out.setdefault(key, res)
        for key, entry in auto.items():
            if any(owner not in out for owner in entry.owners()):
                del out[key]  # its owner is gone: garbage
        return list(out.values())

    def _parse(self, entry: Entry) -> Resource | None:
        cached = self._parsed.get(entry.key)
        if cached is not None and cached[0] == entry.resource_version:
            return cached[1]
        try:
            return from_entry(entry)
        except ManifestError as e:
            log.error("stored %s %s/%s skipped: %s", entry.kind, entry.namespace, entry.name, e)
            return None

    def _derive(self, stored: dict[Key, Resource]) -> dict[Key, Resource]:
        derived: dict[Key, Resource] = {}
        cache: dict[Key, tuple[Any, Resource]] = {}

        def remember(token: Any, make: Any) -> None:
            res_key = make[0]
            hit = self._derived.get(res_key)
            res = hit[1] if hit is not None and hit[0] == token else make[1]()
            cache[res_key] = (token, res)
            derived[res_key] = res

        for res in list(stored.values()):
            if isinstance(res, Namespace) and res.injects_broker:
                key = ("Broker", res.name, DEFAULT_BROKER)
                remember(
                    ("ns", res.metadata.resource_version),
                    (key, lambda ns=res: injected_broker(ns)),
                )
            for type_, ce_source in res.declared_event_types():
                et_name = event_type_name(res.name, res.namespace, type_, ce_source)
                key = ("EventType", res.namespace, et_name)
                remember(
                    ("src", key_of(res), res.metadata.resource_version, type_, ce_source),
                    (key, lambda r=res, t=type_, s=ce_source: declared_event_type(r, t, s)),
                )
        self._derived = cache
        return derived
