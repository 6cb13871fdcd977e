"""The table of resource kinds: which (apiVersion, kind) maps to which model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rabbitmesh.resources.base import Resource


@dataclass(frozen=True)
class KindInfo:
    group: str  # "" for the core group (v1 Secret, Namespace)
    versions: tuple[str, ...]
    kind: str
    plural: str
    model: type[Resource]

    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" if self.group else v for v in self.versions)


_BY_KIND: dict[str, KindInfo] = {}
_ALIASES: dict[str, str] = {}


def register(
    group: str,
    versions: tuple[str, ...],
    plural: str,
    *,
    kind: str | None = None,
    aliases: tuple[str, ...] = (),
    addressable: bool = False,
) -> Callable[[type[Resource]], type[Resource]]:
    """Class decorator: make a Resource model loadable from manifests and the API."""

    def wrap(model: type[Resource]) -> type[Resource]:
        k = kind or model.__name__
        model.GROUP, model.VERSIONS, model.KIND, model.PLURAL = group, versions, k, plural
        model.ADDRESSABLE = addressable
        info = KindInfo(group, versions, k, plural, model)
        _BY_KIND[k] = info
        for a in aliases:
            _ALIASES[a] = k
        return model

    return wrap


def lookup(api_version: str, kind: str) -> KindInfo | None:
    """The KindInfo for a manifest's apiVersion and kind, honouring kind aliases."""
    info = _BY_KIND.get(_ALIASES.get(kind, kind))
    if info is None or api_version not in info.api_versions():
        return None
    return info


def by_kind(kind: str) -> KindInfo | None:
    """Case-insensitive lookup by kind, plural or alias (as `kubectl get` accepts)."""
    want = kind.lower()
    for info in _BY_KIND.values():
        if want in (info.kind.lower(), info.plural, info.plural.rstrip("s")):
            return info
    for alias, k in _ALIASES.items():
        if want in (alias.lower(), alias.lower() + "s"):
            return _BY_KIND[k]
    return None


def all_kinds() -> list[KindInfo]:
    return list(_BY_KIND.values())


def aliases() -> dict[str, KindInfo]:
    """Other kind names of a registered kind (InMemoryChannel -> Channel's info)."""
    return {alias: _BY_KIND[k] for alias, k in _ALIASES.items()}


def canonical_kind(kind: str) -> str:
    return _ALIASES.get(kind, kind)
