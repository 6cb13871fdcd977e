"""Reading `secretKeyRef`s: a Secret's value from the resource store, or why it is missing."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.core import REDACTED, Secret

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


class Redactor:
    """Replaces every occurrence of the given Secret values in a text by `<redacted>`.

    Values are matched as substrings (an argv `--token=$(TOKEN)` or a process echoing its
    environment hides the value too), longest first; a multi-line value is also matched line
    by line, as log lines arrive one line at a time."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        parts: set[str] = set()
        for value in values:
            parts.add(value)
            parts.update(line for line in value.splitlines() if line.strip())
        parts.discard("")
        self.values = tuple(sorted(parts, key=len, reverse=True))
        self._pattern = (
            re.compile("|".join(re.escape(v) for v in self.values)) if self.values else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redactor) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.values)
