"""Which EventPolicies apply to a target, and whom and what they allow (Knative's semantics).

- A policy applies to the targets of its own namespace that `spec.to` names (a `ref`, or a
  `selector`: kind and labels); with no `spec.to`, to every target of its namespace.
- `spec.from`: `sub` (exact, or a prefix ending in `*`), or a `ref` to a resource whose own
  identity rabbitmesh knows (a source, a Trigger, a Subscription: rabbitmesh/auth/identity.py;
  namespace defaults to the policy's). No `spec.from` allows no one.
- `spec.filters` (the Subscriptions API dialects) must also match each event (ANDed with
  `from`). Several policies: any one allowing is enough.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rabbitmesh.auth.identity import subject
from rabbitmesh.filters import compile_filters
from rabbitmesh.filters.base import EventFilter
from rabbitmesh.hosted import HOSTED_KINDS
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.eventpolicy import EventPolicy, PolicyRef
from rabbitmesh.resources.registry import by_kind, canonical_kind

#: The kinds a policy can protect: what has an ingress path here (rabbitmesh/hosted.py).
TARGET_KINDS = tuple(k.kind for k in HOSTED_KINDS)


@dataclass(frozen=True)
class Compiled:
    name: str
    subjects: tuple[str, ...]
    filter: EventFilter | None

    def allows_subject(self, sub: str) -> bool:
        for pattern in self.subjects:
            if pattern.endswith("*"):
                if sub.startswith(pattern[:-1]):
                    return True
            elif sub == pattern:
                return True
        return False

    def allows_event(self, attributes: Mapping[str, Any]) -> bool:
        return self.filter is None or self.filter.matches(attributes)


def _group(ref_api_version: str | None, kind: str) -> str:
    if ref_api_version:
        return ref_api_version.rpartition("/")[0]
    info = by_kind(kind)
    return info.group if info is not None else ""


def ref_subject(ref: PolicyRef, namespace: str) -> str:
    """The identity of what `ref` names (the `sub` of the tokens it sends with)."""
    return subject(
        _group(ref.api_version, ref.kind), ref.kind, ref.namespace or namespace, ref.name
    )


def subjects(policy: EventPolicy) -> list[str]:
    """Knative's `status.from`: every `sub` pattern, refs resolved."""
    out = []
    for f in policy.spec.from_ or []:
        out.append(f.sub if f.sub is not None else ref_subject(f.ref, policy.namespace))  # type: ignore[arg-type]
    return out


def _kind_matches(kind: str | None, api_version: str | None, target: Resource) -> bool:
    if kind is not None and canonical_kind(kind) != target.KIND:
        return False
    if api_version and api_version.rpartition("/")[0] != target.GROUP:
        return False
    return True


def applies(policy: EventPolicy, target: Resource) -> bool:
    if policy.namespace != target.namespace:
        return False
    if not policy.spec.to:
        return True
    for to in policy.spec.to:
        if to.ref is not None:
            if to.ref.name == target.name and _kind_matches(
                to.ref.kind, to.ref.api_version, target
            ):
                return True
        elif to.selector is not None:
            sel = to.selector
            if _kind_matches(sel.kind, sel.api_version, target) and sel.matches(
                target.metadata.labels
            ):
                return True
    return False


def compile_policy(policy: EventPolicy) -> Compiled:
    f = compile_filters(policy.spec.filters) if policy.spec.filters else None
    return Compiled(policy.name, tuple(subjects(policy)), f)


def targets(policy: EventPolicy, resources: Iterable[Resource]) -> list[Resource]:
    return [r for r in resources if r.KIND in TARGET_KINDS and applies(policy, r)]


class PolicyIndex:
    """The compiled policies of each target, cached until a policy or a target changes."""

    def __init__(self, resources: Callable[[], Iterable[Resource]]) -> None:
        self.resources = resources
        self._cache: dict[tuple[str, str, str], list[Compiled]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    def for_target(self, target: Resource) -> list[Compiled]:
        cached = self._cache.get(target.key)
        if cached is not None:
            return cached
        found = [
            compile_policy(p)
            for p in self.resources()
            if isinstance(p, EventPolicy) and applies(p, target)
        ]
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[target.key] = found
        return found
