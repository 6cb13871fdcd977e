"""What the admin API reads and writes: documents -> validated resources -> JSON.

Bodies are parsed by rabbitmesh/api/parsing.py. Invalid resources give every problem found
with its field path. Secret values never leave: a Secret is shown with each value replaced
by `<redacted>`, and a `<redacted>` sent back (a Secret read, edited and replaced) keeps the
stored value.
"""

from __future__ import annotations

from typing import Any

from rabbitmesh.api.errors import ApiError
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.core import REDACTED, Secret
from rabbitmesh.resources.loader import ExtraCheck, ManifestError, parse_document
from rabbitmesh.resources.registry import KindInfo, aliases, all_kinds, by_kind
from rabbitmesh.store.manifests import key_of
from rabbitmesh.store.state import Entry


def api_version_of(info: KindInfo) -> str:
    return info.api_versions()[-1] if info.kind == "EventType" else info.api_versions()[0]


def resolve_kind(group: str, version: str, plural: str) -> KindInfo:
    info = by_kind(plural)
    if info is None or info.group != group or version not in info.versions:
        what = f"{plural}.{group}/{version}" if group else f"{plural}/{version}"
        raise ApiError(404, f"the server does not know the resource type {what}")
    return info


def discovery() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "resources": [
            {
                "group": k.group,
                "versions": list(k.versions),
                "kind": k.kind,
                "plural": k.plural,
                "namespaced": k.model.NAMESPACED,
                "path": f"/apis/{k.group}" if k.group else "/api",
            }
            for k in sorted(all_kinds(), key=lambda k: (k.group, k.kind))
        ]
        # Another name for a kind (InMemoryChannel is Channel here), so clients that map
        # manifests to paths know it; its path serves the same resources.
        + [
            {
                "group": k.group,
                "versions": list(k.versions),
                "kind": alias,
                "plural": alias.lower() + "s",
                "namespaced": k.model.NAMESPACED,
                "path": f"/apis/{k.group}" if k.group else "/api",
            }
            for alias, k in sorted(aliases().items())
        ],
    }


def details_of(e: ManifestError) -> list[dict[str, Any]]:
    pairs = e.details or [(e.field, e.message)]
    return [{"field": field or None, "message": message} for field, message in pairs]


def validate(doc: Any, index: int = 1, extra: ExtraCheck | None = None) -> Resource:
    """A validated resource, or ApiError 422 with every (field, message) found. `extra`:
    checks that need this server's settings (Names.check_length)."""
    try:
        return parse_document(doc, "request", index, extra)
    except ManifestError as e:
        what = f"{e.what}: " if e.what else ""
        raise ApiError(
            422,
            f"invalid {what}{e.field + ': ' if e.field else ''}{e.message}",
            details=details_of(e),
        ) from None


def restore_secret(res: Resource, stored: Entry | None) -> Resource:
    """A Secret sent back with `<redacted>` values keeps the stored ones."""
    if not isinstance(res, Secret):
        return res
    old = (stored.manifest.get("data") or {}) if stored is not None else {}
    data = dict(res.data)
    for k, v in data.items():
        if v == REDACTED:
            if k not in old:
                raise ApiError(
                    422,
                    f"invalid Secret {res.name}: data.{k}: {REDACTED} keeps a stored value, "
                    "and there is none",
                    details=[{"field": f"data.{k}", "message": "no stored value to keep"}],
                )
            data[k] = old[k]
    return res.model_copy(update={"data": data})


def check_target(
    res: Resource, info: KindInfo, namespace: str | None, name: str | None = None
) -> None:
    """The body must be the kind and object the URL names (400 otherwise)."""
    if res.KIND != info.kind:
        raise ApiError(400, f"the body is a {res.KIND}, but the URL is for {info.plural}")
    if namespace is not None and res.namespace != namespace:
        raise ApiError(
            400,
            f"the namespace of the object ({res.namespace}) does not match the namespace in "
            f"the URL ({namespace})",
        )
    if name is not None and res.name != name:
        raise ApiError(
            400, f"the name of the object ({res.name}) does not match the name in the URL ({name})"
        )


def fill_from_url(doc: Any, info: KindInfo, version: str, namespace: str | None) -> Any:
    """kubectl always sends apiVersion, kind and namespace; curl users may not."""
    if not isinstance(doc, dict):
        return doc
    doc.setdefault("apiVersion", f"{info.group}/{version}" if info.group else version)
    doc.setdefault("kind", info.kind)
    meta = doc.get("metadata")
    if namespace is not None and isinstance(meta, dict):
        meta.setdefault("namespace", namespace)
    return doc


def describe(res: Resource) -> str:
    kind, ns, name = key_of(res)
    return f"{kind} {ns + '/' if ns else ''}{name}"
