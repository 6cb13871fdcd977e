"""Resources <-> what the store keeps of them.

The store keeps a resource's manifest as validated (defaults filled in), without `status` and
without the fields the store itself manages (`generation`, `creationTimestamp`, `uid`,
`resourceVersion`); a Secret is kept as Kubernetes keeps it, `stringData` merged into `data`.
"""

from __future__ import annotations

from typing import Any

from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.core import REDACTED, Secret
from rabbitmesh.resources.loader import parse_document
from rabbitmesh.store.state import Entry, Key

SERVER_FIELDS = ("generation", "creationTimestamp", "uid", "resourceVersion")


def key_of(res: Resource) -> Key:
    return (res.KIND, res.namespace if res.NAMESPACED else "", res.name)


def to_manifest(res: Resource) -> dict[str, Any]:
    if isinstance(res, Secret):
        res = res.normalized()
    out = res.dump()
    out.pop("status", None)
    if isinstance(res, Secret):
        out.pop("stringData", None)
    meta = out["metadata"]
    for name in SERVER_FIELDS:
        meta.pop(name, None)
    for name in ("labels", "annotations"):
        if not meta.get(name):
            meta.pop(name, None)
    if not res.NAMESPACED:
        meta.pop("namespace", None)
    return out


def from_entry(entry: Entry) -> Resource:
    """The resource an entry holds, with the store's fields in its metadata.

    Raises ManifestError if the manifest no longer validates (a newer rabbitmesh with stricter
    rules reading an older store).
    """
    res = parse_document(entry.manifest, f"store:{entry.kind}", 1)
    meta = res.metadata
    meta.generation = entry.generation
    meta.creation_timestamp = entry.created or None
    meta.uid = entry.uid
    meta.resource_version = str(entry.resource_version)
    return res


def render(res: Resource) -> dict[str, Any]:
    """A resource as the API and the watch feed serve it: Kubernetes' field order (status
    last), empty labels/annotations left out, a Secret's values redacted."""
    out = res.dump()
    if isinstance(res, Secret):
        out["data"] = dict.fromkeys(res.normalized().data, REDACTED)
        out.pop("stringData", None)
    meta = out.get("metadata", {})
    for name in ("labels", "annotations"):
        if not meta.get(name):
            meta.pop(name, None)
    status = out.pop("status", None)
    if status is not None:
        out["status"] = status
    return out
