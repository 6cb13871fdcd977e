"""Names in tokens, as Knative gives them, so EventPolicies written for Knative work here.

- A target's audience (`status.address.audience`, the `aud` a sender's token must carry):
  `{group}/{kind}/{namespace}/{name}`, kind in lowercase
  (`eventing.knative.dev/broker/default/orders`).
- A resource's own identity (the `sub` of the tokens rabbitmesh signs for what it sends on
  that resource's behalf), as Knative names the OIDC service account of each source, trigger
  and subscription: `system:serviceaccount:{namespace}:{name}-oidc-{group}-{kind}`, the
  account name shortened with a hash past 63 characters as Kubernetes' `kmeta.ChildName`.
"""

from __future__ import annotations

import hashlib

SA_PREFIX = "system:serviceaccount:"
_MAX_NAME = 63


def audience(group: str, kind: str, namespace: str, name: str) -> str:
    return f"{group}/{kind.lower()}/{namespace}/{name}"


def service_account(group: str, kind: str, name: str) -> str:
    """Knative's GetOIDCServiceAccountNameForResource."""
    full = f"{name}-oidc-{group}-{kind.lower()}"
    if len(full) <= _MAX_NAME:
        return full
    digest = hashlib.md5(full.encode(), usedforsecurity=False).hexdigest()
    return full[: _MAX_NAME - len(digest)] + digest


def subject(group: str, kind: str, namespace: str, name: str) -> str:
    return f"{SA_PREFIX}{namespace}:{service_account(group, kind, name)}"


def namespace_of(sub: str) -> str | None:
    """The namespace of a Kubernetes service-account subject, else None."""
    if not sub.startswith(SA_PREFIX):
        return None
    ns, sep, _ = sub[len(SA_PREFIX) :].partition(":")
    return ns if sep and ns else None


def destination_audience(
    ref_kind: str | None,
    ref_name: str | None,
    ref_namespace: str,
    given: str | None,
) -> str | None:
    """The `aud` for a request to a destination: its `audience` field, else the audience of
    the hosted resource its ref names, else None (no token is sent: nobody said for whom)."""
    if given:
        return given
    if ref_kind is None or ref_name is None:
        return None
    from rabbitmesh.hosted import hosted_kind  # the kinds with an ingress path here
    from rabbitmesh.resources.registry import by_kind

    row = hosted_kind(ref_kind)
    info = by_kind(row.kind) if row is not None else None
    if info is None:
        return None
    return audience(info.group, info.kind, ref_namespace, ref_name)
