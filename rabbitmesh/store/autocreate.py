"""EventTypes for the (type, source) pairs seen at ingress: Knative's eventtype-auto-create.

Off by default (RABBITMESH_EVENTTYPE_AUTO_CREATE). When on, an aiohttp middleware notes the
type and source of every event a broker or channel ingress accepted (202) in a bounded set:
no await, no I/O, a set lookup per event. Once a second a background task writes the new
ones to the resource store as v1beta3 EventTypes (origin `auto`, named and shaped as Knative
names and shapes them), owned by their broker or channel, so they go when it goes. Replicas
seeing the same pair write the same name with create-if-absent: one wins, the others see a
conflict and stop trying.

Anyone who may post to an ingress chooses the types, so what they can make rabbitmesh store is
bounded per broker (or channel): at most RABBITMESH_EVENTTYPE_AUTO_CREATE_MAX_PER_BROKER
auto-created EventTypes, and at most RABBITMESH_EVENTTYPE_AUTO_CREATE_PER_MINUTE new ones a
minute (a token bucket, so a burst cannot take more than a minute's worth). What is refused is
counted in `eventtype_auto_create_refused{reason="limit"|"rate"}` and tried again when the type
is seen again (the rate refills; the limit frees up when EventTypes are deleted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from rabbitmesh import metrics
from rabbitmesh.hosted import HOSTED_KINDS
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.registry import by_kind
from rabbitmesh.store.desired import event_type_name
from rabbitmesh.store.stream import Store, StoreUnavailable

log = logging.getLogger("rabbitmesh.eventtypes")

#: Pairs waiting to be written, at most; more are dropped until the next flush.
MAX_PENDING = 10_000
#: Pairs remembered as written; past this the memory is cleared (the store still dedupes).
MAX_KNOWN = 100_000
FLUSH_SECONDS = 1.0

#: Ingress route -> the kind of addressable it serves, for the kinds whose EventTypes are
#: auto-created (rabbitmesh/hosted.py).
ROUTE_KINDS = {k.path: k.kind for k in HOSTED_KINDS if k.auto_event_types}

Seen = tuple[str, str, str, str, str]  # (kind, namespace, name, type, source)
Owner = tuple[str, str, str]  # (kind, namespace, name) of the broker or channel
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


def api_version(kind: str) -> str:
    """The kind's apiVersion in an EventType's reference and owner (its first version)."""
    info = by_kind(kind)
    if info is None:
        raise KeyError(f"{kind} is not a registered kind")
    return info.api_versions()[0]


class Bucket:
    """A token bucket: `per_minute` tokens a minute, holding at most a minute's worth."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.per_minute, self.tokens + (now - self.at) * self.per_minute / 60)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class AutoEventTypes:
    def __init__(
        self,
        store: Store,
        lookup: Callable[[str, str, str], Resource | None],
        max_per_owner: int = 1000,
        per_minute: int = 60,
    ) -> None:
        self.store = store
        self.lookup = lookup  # (kind, namespace, name) -> the live resource, for its uid
        self.max_per_owner = max_per_owner
        self.per_minute = per_minute
        self.pending: set[Seen] = set()
        self.known: set[Seen] = set()
        self.buckets: dict[Owner, Bucket] = {}

    def observe(self, kind: str, namespace: str, name: str, type_: str, source: str) -> None:
        seen = (kind, namespace, name, type_, source)
        if seen in self.known or seen in self.pending or not type_:
            return
        if len(self.pending) < MAX_PENDING:
            self.pending.add(seen)

    def auto_created(self) -> Counter[Owner]:
        """How many auto-created EventTypes each broker or channel has in the store."""
        counts: Counter[Owner] = Counter()
        for entry in self.store.state.entries.values():
            if entry.kind == "EventType" and entry.origin == "auto":
                ref = (entry.manifest.get("spec") or {}).get("reference") or {}
                counts[(str(ref.get("kind", "")), entry.namespace, str(ref.get("name", "")))] += 1
        return counts

    def _allowed(self, owner: Owner, counts: Counter[Owner]) -> bool:
        """Within the owner's limit and rate; a refusal is counted in the metric."""
        reason = None
        if counts[owner] >= self.max_per_owner:
            reason = "limit"
        else:
            bucket = self.buckets.get(owner)
            if bucket is None:
                bucket = self.buckets[owner] = Bucket(self.per_minute)
            if not bucket.take():
                reason = "rate"
        if reason is None:
            return True
        metrics.eventtype_auto_create_refused.labels(*owner, reason).inc()
        return False

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
                        "apiVersion": api_version(kind),
                        "kind": kind,
                        "name": name,
                        "uid": owner.metadata.uid or "",
                    }
                ],
            },
            "spec": {
                "reference": {"apiVersion": api_version(kind), "kind": kind, "name": name},
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
        counts = self.auto_created()
        for seen in batch:
            kind, ns, name, type_, source = seen
            key = ("EventType", ns, event_type_name(name, ns, type_, source))
            owner = self.lookup(kind, ns, name)
            if self.store.get(key) is None and owner is not None:
                if not self._allowed((kind, ns, name), counts):
                    continue  # not remembered as known: tried again when seen again
                counts[(kind, ns, name)] += 1
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
