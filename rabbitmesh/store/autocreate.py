"""EventTypes for the (type, source) pairs seen at ingress: Knative's eventtype-auto-create.

Off by default (RABBITMESH_EVENTTYPE_AUTO_CREATE). When on, an aiohttp middleware notes the
type and source of every event a broker or channel ingress accepted (202) in a bounded set:
no await, no I/O, a set lookup per event. Once a second a background task writes the new
ones to the resource store as v1beta3 EventTypes (origin `auto`, named and shaped as Knative
names and shapes them), owned by their broker or channel, so they go when it goes. Replicas
seeing the same pair write the same name with create-if-absent: one wins, the others see a
conflict and stop trying.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from rabbitmesh.reconciler.desired import event_type_name
from rabbitmesh.resources.base import Resource
from rabbitmesh.store.stream import Store, StoreUnavailable

log = logging.getLogger("rabbitmesh.eventtypes")

#: Pairs waiting to be written, at most; more are dropped until the next flush.
MAX_PENDING = 10_000
#: Pairs remembered as written; past this the memory is cleared (the store still dedupes).
MAX_KNOWN = 100_000
FLUSH_SECONDS = 1.0

#: Ingress route -> the kind of addressable it serves.
ROUTE_KINDS = {"/{namespace}/{name}": "Broker", "/channels/{namespace}/{name}": "Channel"}
API_VERSIONS = {"Broker": "eventing.knative.dev/v1", "Channel": "messaging.knative.dev/v1"}

Seen = tuple[str, str, str, str, str]  # (kind, namespace, name, type, source)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pairs_of(request: web.Request, body: bytes) -> list[tuple[str, str]]:
    """(type, source) of each event in an accepted ingress request."""
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype == "application/cloudevents-batch+json":
        events = orjson.loads(body)
    elif ctype.startswith("application/cloudevents"):
        events = [orjson.loads(body)]
    else:
        h = request.headers
        return [(h.get("ce-type", ""), h.get("ce-source", ""))]
    return [
        (str(e.get("type", "")), str(e.get("source", ""))) for e in events if isinstance(e, dict)
    ]


class AutoEventTypes:
    def __init__(self, store: Store, lookup: Callable[[str, str, str], Resource | None]) -> None:
        self.store = store
        self.lookup = lookup  # (kind, namespace, name) -> the live resource, for its uid
        self.pending: set[Seen] = set()
        self.known: set[Seen] = set()

    def observe(self, kind: str, namespace: str, name: str, type_: str, source: str) -> None:
        seen = (kind, namespace, name, type_, source)
        if seen in self.known or seen in self.pending or not type_:
            return
        if len(self.pending) < MAX_PENDING:
            self.pending.add(seen)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if response.status != 202 or request.method != "POST":
            return response
        resource = request.match_info.route.resource
        kind = ROUTE_KINDS.get(resource.canonical) if resource is not None else None
        if kind is None:
            return response
        try:
            body = await request.read()  # already read by the ingress: returns the cached bytes
            pairs = pairs_of(request, body)
        except (ValueError, TypeError):
            return response
        ns, name = request.match_info["namespace"], request.match_info["name"]
        for type_, source in pairs:
            self.observe(kind, ns, name, type_, source)
        return response

    def manifest(self, seen: Seen, owner: Resource) -> dict[str, Any]:
        kind, ns, name, type_, source = seen
        return {
            "apiVersion": "eventing.knative.dev/v1beta3",
            "kind": "EventType",
            "metadata": {
                "name": event_type_name(name, ns, type_, source),
                "namespace": ns,
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSIONS[kind],
                        "kind": kind,
                        "name": name,
                        "uid": owner.metadata.uid or "",
                    }
                ],
            },
            "spec": {
                "reference": {"apiVersion": API_VERSIONS[kind], "kind": kind, "name": name},
                "description": "Event Type auto-created by rabbitmesh",
                "attributes": [
                    {"name": "type", "value": type_, "required": True},
                    {"name": "source", "value": source, "required": True},
                    {"name": "specversion", "value": "1.0", "required": True},
                    {"name": "id", "required": True},
                ],
            },
        }

    async def flush(self) -> None:
        batch, self.pending = self.pending, set()
        for seen in batch:
            kind, ns, name, type_, source = seen
            key = ("EventType", ns, event_type_name(name, ns, type_, source))
            owner = self.lookup(kind, ns, name)
            if self.store.get(key) is None and owner is not None:
                try:
                    await self.store.apply(
                        self.manifest(seen, owner), key, origin="auto", expect="absent"
                    )
                except StoreUnavailable as e:
                    log.warning("EventType for %s not registered yet: %s", type_, e)
                    self.pending.add(seen)
                    continue
            if len(self.known) >= MAX_KNOWN:
                self.known.clear()
            self.known.add(seen)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(FLUSH_SECONDS):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            if self.pending:
                await self.flush()
