"""Reading `secretKeyRef`s: a Secret's value from the resource store, or why it is missing."""

from __future__ import annotations

from collections.abc import Callable

from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.core import Secret

#: (namespace, name) -> the Secret, or None.
SecretLookup = Callable[[str, str], Secret | None]
#: (kind, namespace, name) -> the reconciled resource, or None (Context.get).
ResourceLookup = Callable[[str, str, str], Resource | None]


def secrets_in(resources: ResourceLookup) -> SecretLookup:
    """The Secrets among `resources`."""

    def get(namespace: str, name: str) -> Secret | None:
        res = resources("Secret", namespace, name)
        return res if isinstance(res, Secret) else None

    return get


class NotReady(Exception):
    """A source cannot run yet: `reason` and `message` go to its Ready condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def secret_value(
    lookup: SecretLookup, namespace: str, name: str, key: str, *, optional: bool = False
) -> str | None:
    """The value of `key` in Secret `name`; None if optional and missing; else NotReady."""
    secret = lookup(namespace, name)
    if secret is None:
        if optional:
            return None
        raise NotReady("SecretNotFound", f"Secret {name!r} not found in namespace {namespace!r}")
    value = secret.value(key)
    if value is None:
        if optional:
            return None
        raise NotReady(
            "SecretNotFound",
            f"key {key!r} not found in Secret {name!r} (namespace {namespace!r})",
        )
    return value
