"""Talking to the admin API from tests, over real HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/{ns}/brokers"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/{ns}/triggers"
EVENTTYPES = "/apis/eventing.knative.dev/v1beta3/namespaces/{ns}/eventtypes"
SECRETS = "/api/v1/namespaces/{ns}/secrets"


async def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    text: str | None = None,
    token: str | None = None,
    content_type: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if text is not None:
        kwargs["data"] = text.encode()
        headers["Content-Type"] = content_type or "application/yaml"
    elif body is not None:
        kwargs["json"] = body
    async with aiohttp.ClientSession() as s, s.request(method, url, **kwargs) as r:
        raw = await r.read()
        try:
            return r.status, await r.json(content_type=None) if raw else None
        except ValueError:
            return r.status, raw.decode(errors="replace")


def broker(name: str, ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def trigger(
    name: str, broker_name: str, url: str, ns: str = "default", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"broker": broker_name, "subscriber": {"uri": url}, **spec},
    }


def ready(obj: dict[str, Any]) -> tuple[str, str | None]:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == "Ready":
            return c["status"], c.get("reason")
    return "Unknown", None
