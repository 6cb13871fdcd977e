"""The environment a SinkBinding (and a ContainerSource) gives a process, as Knative's does.

- `K_SINK`: the resolved sink URL;
- `K_CE_OVERRIDES`: the source's `ceOverrides` as JSON (`{"extensions": {...}}`), or empty
  when it has none (Knative sets the variable either way);
- `NAME`, `NAMESPACE`: the source's name and namespace.

A SinkBinding runs nothing itself: `rabbitmesh sinkbinding exec NAME -- CMD...` (the CLI) reads
it from the API and runs CMD with this environment, so any program written for Knative's
SinkBinding finds its sink.
"""

from __future__ import annotations

import json
from typing import Any


def binding_env(
    sink: str, ce_overrides: dict[str, Any] | None, name: str, namespace: str
) -> dict[str, str]:
    return {
        "K_SINK": sink,
        "K_CE_OVERRIDES": json.dumps(ce_overrides, separators=(",", ":")) if ce_overrides else "",
        "NAME": name,
        "NAMESPACE": namespace,
    }


class NotBound(Exception):
    """The SinkBinding has no resolved sink (yet): its status says why."""


def env_of(obj: dict[str, Any]) -> dict[str, str]:
    """The environment for a SinkBinding as the admin API returns it."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    sink = status.get("sinkUri")
    if not sink:
        reason = ""
        for c in status.get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") != "True":
                reason = f": {c.get('reason') or ''} {c.get('message') or ''}".rstrip()
        raise NotBound(f"SinkBinding {meta.get('name')!r} has no resolved sink{reason}")
    overrides = (obj.get("spec") or {}).get("ceOverrides")
    return binding_env(sink, overrides, meta.get("name", ""), meta.get("namespace", "default"))
