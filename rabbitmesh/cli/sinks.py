"""SINK arguments, as kn reads them, to Knative Destinations and back.

    ksvc:NAME      a Knative Service      (serving.knative.dev/v1 Service)
    svc:NAME       a Kubernetes Service   (v1 Service)
    broker:NAME    a Broker               (eventing.knative.dev/v1)
    channel:NAME   a Channel              (messaging.knative.dev/v1)
    NAME           the same as ksvc:NAME
    http(s)://...  a URL
Each prefixed form takes an optional `:NAMESPACE` suffix (`broker:default:team-a`).
"""

from __future__ import annotations

from typing import Any

from rabbitmesh.cli.client import CliError

PREFIXES: dict[str, tuple[str, str]] = {
    "ksvc": ("serving.knative.dev/v1", "Service"),
    "svc": ("v1", "Service"),
    "service": ("v1", "Service"),
    "broker": ("eventing.knative.dev/v1", "Broker"),
    "channel": ("messaging.knative.dev/v1", "Channel"),
    "imc": ("messaging.knative.dev/v1", "InMemoryChannel"),
    "imcv1": ("messaging.knative.dev/v1", "InMemoryChannel"),
    "sequence": ("flows.knative.dev/v1", "Sequence"),
    "parallel": ("flows.knative.dev/v1", "Parallel"),
    "rabbitmqsink": ("sinks.rabbitmesh.dev/v1alpha1", "RabbitmqSink"),
}
SHORT = {kind: prefix for prefix, (_, kind) in reversed(PREFIXES.items())}
SHORT["Service"] = "ksvc"


def parse_sink(text: str, flag: str = "--sink") -> dict[str, Any]:
    if text.startswith(("http://", "https://")):
        return {"uri": text}
    prefix, sep, rest = text.partition(":")
    if not sep:
        prefix, rest = "ksvc", text
    if prefix not in PREFIXES:
        raise CliError(
            f"{flag} {text!r}: use ksvc:NAME, svc:NAME, broker:NAME, channel:NAME, a bare NAME "
            "or an http(s):// URL"
        )
    name, _, namespace = rest.partition(":")
    if not name:
        raise CliError(f"{flag} {text!r}: a name is missing after {prefix}:")
    api_version, kind = PREFIXES[prefix]
    ref: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "name": name}
    if namespace:
        ref["namespace"] = namespace
    return {"ref": ref}


def format_destination(dest: dict[str, Any]) -> str:
    """A destination as kn shows it: `broker:default`, `ksvc:display`, or the URL."""
    ref = dest.get("ref")
    if not ref:
        return str(dest.get("uri", ""))
    kind = ref.get("kind", "")
    prefix = SHORT.get(kind, kind.lower())
    if kind == "Service" and ref.get("apiVersion") == "v1":
        prefix = "svc"
    out = f"{prefix}:{ref.get('name', '')}"
    if dest.get("uri"):
        out += dest["uri"]
    return out
