"""ApiServerSource: Kubernetes API changes as CloudEvents, as Knative's adapter emits them.

For each object added, updated or deleted (watch events ADDED, MODIFIED, DELETED):
- type `dev.knative.apiserver.{ref|resource}.{add|update|delete}` (`ref` in Reference mode);
- source: the API server's URL (the kubeconfig's `server`);
- subject: the object's self-link as Knative builds it, `/apis/{apiVersion}/namespaces/{ns}/
  {plural}/{name}` (core objects too: `/apis/v1/namespaces/default/pods/p`);
- extensions `kind`, `name`, `namespace` (not `namespace` for cluster-scoped objects), plus
  `ceOverrides`;
- data (application/json): the object (Resource mode) or its ObjectReference
  `{"kind", "namespace", "name", "apiVersion"}` (Reference mode).

Watching is list + watch per resource, with resourceVersion bookkeeping:
- the first list establishes what exists (no events, as Knative: only changes are events);
- the watch resumes from the last resourceVersion seen (an event's or a BOOKMARK's) whenever
  its stream ends or breaks, so nothing is missed and nothing is sent twice;
- a 410 Gone (the version is too old: an HTTP 410, or an ERROR event with a 410 Status) makes
  it list again and diff the list against what it knew: objects that appeared are `add`,
  changed (another resourceVersion) `update`, gone `delete` — where Knative's adapter, which
  ignores re-lists, would miss them. An event whose object has the resourceVersion already
  seen is never sent again.

Filters: each resource's label `selector` (server-side), `owner` (the object's controller
ownerReference must have that apiVersion/kind), `namespaceSelector` (none: the source's own
namespace; `{}`: every namespace; else the namespaces whose labels match, followed live), and
the experimental Subscriptions API `filters` on the events. Events are sent in order, each
with retries, before the next watch event is read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.filters import EventFilter, compile_filters
from rabbitmesh.resources.sources import (
    APISERVER_TYPE_PREFIX,
    ApiServerResource,
    ApiServerSource,
    LabelSelector,
)
from rabbitmesh.sources.kube import Kube, KubeError, api_path
from rabbitmesh.sources.manager import Plan, Runtime
from rabbitmesh.sources.sender import Retry, deliver, new_event

log = logging.getLogger("rabbitmesh.sources")

#: Watches are re-opened after a random 5 to 10 minutes, as client-go's reflector does.
WATCH_TIMEOUT = (300, 600)
#: API server events are sent in order: a sink that is down holds the watch back, retried
#: for about a minute and a half before the event is given up (and logged).
APISERVER_RETRY = Retry(retries=10, backoff=0.2, max_backoff=15.0, timeout=30.0)
#: Objects per page when listing.
LIST_LIMIT = 500

_UNPLURALIZED = ("endpoints",)


def guess_plural(kind: str) -> str:
    """Kubernetes' UnsafeGuessKindToResource, which Knative's self-links use."""
    singular = kind.lower()
    if not singular or singular.endswith(_UNPLURALIZED):
        return singular
    if singular.endswith("s"):
        return singular + "es"
    if singular.endswith("y"):
        return singular[:-1] + "ies"
    return singular + "s"


def self_link(api_version: str, kind: str, namespace: str, name: str) -> str:
    """Knative's createSelfLink: the event's subject."""
    version = api_version
    if "." in version and "/" not in version:
        version += "/versionUnknown"
    return f"/apis/{version}/namespaces/{namespace}/{guess_plural(kind)}/{name}"


def object_reference(obj: dict[str, Any]) -> dict[str, str]:
    """corev1.ObjectReference in Go's field order, empty fields left out (omitempty)."""
    meta = obj.get("metadata") or {}
    ref = {
        "kind": obj.get("kind", ""),
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "apiVersion": obj.get("apiVersion", ""),
    }
    return {k: v for k, v in ref.items() if v}


def make_event(
    ce_source: str, op: str, obj: dict[str, Any], reference: bool, extensions: dict[str, str]
) -> CloudEvent:
    meta = obj.get("metadata") or {}
    kind, name, namespace = obj.get("kind", ""), meta.get("name", ""), meta.get("namespace", "")
    mode = "ref" if reference else "resource"
    data = object_reference(obj) if reference else obj
    ext = {"kind": kind, "name": name}
    if namespace:
        ext["namespace"] = namespace
    return new_event(
        f"{APISERVER_TYPE_PREFIX}{mode}.{op}",
        ce_source,
        data=orjson.dumps(data, option=orjson.OPT_SORT_KEYS if not reference else 0),
        datacontenttype="application/json",
        subject=self_link(obj.get("apiVersion", ""), kind, namespace, name),
        extensions={**ext, **extensions},
    )


def controlled_by(obj: dict[str, Any], api_version: str, kind: str) -> bool:
    """Knative's owner filter: the object's controller has this apiVersion and kind."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return (not api_version or ref.get("apiVersion") == api_version) and (
                not kind or ref.get("kind") == kind
            )
    return False


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return meta.get("uid") or f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Gone(Exception):
    """410: the resourceVersion to resume from is too old; list again."""


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class Watcher:
    """List + watch of one collection, with its resourceVersion and what it knows exists."""

    kube: Kube
    path: str
    api_version: str
    kind: str
    selector: str
    emit: Emit
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: str | None = None
    #: Set once the first list is in.
    listed: asyncio.Event = field(default_factory=asyncio.Event)

    def _normalize(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("apiVersion", self.api_version)  # list items often lack them
        obj.setdefault("kind", self.kind)
        return obj

    async def run(self, on_error: Callable[[KubeError | None], None]) -> None:
        delay = 0.5
        relist = True
        while True:
            try:
                if relist:
                    await self.relist()
                    relist = False
                on_error(None)
                await self.watch_once()
                delay = 0.5
            except Gone:
                log.info(
                    "watch %s: resourceVersion %s is gone; listing again", self.path, self.version
                )
                relist = True
            except KubeError as e:
                on_error(e)
                log.warning("watch %s: %s; retrying in %.1fs", self.path, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def relist(self) -> None:
        params = {"limit": str(LIST_LIMIT)}
        if self.selector:
            params["labelSelector"] = self.selector
        items: dict[str, dict[str, Any]] = {}
        while True:
            page = await self.kube.get(self.path, params)
            for item in page.get("items") or []:
                obj = self._normalize(item)
                items[_key(obj)] = obj
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = meta["continue"]
        version = str(meta.get("resourceVersion", ""))
        if self.listed.is_set():  # a re-list: what changed while we could not watch
            for key, obj in list(self.known.items()):
                if key not in items:
                    await self.emit("delete", obj)
            for key, obj in items.items():
                old = self.known.get(key)
                if old is None:
                    await self.emit("add", obj)
                elif _version(old) != _version(obj):
                    await self.emit("update", obj)
        self.known = items
        self.version = version
        self.listed.set()

    async def watch_once(self) -> None:
        params = {"allowWatchBookmarks": "true"}
        if self.version:
            params["resourceVersion"] = self.version
        if self.selector:
            params["labelSelector"] = self.selector
        try:
            stream = self.kube.watch(self.path, params, random.randint(*WATCH_TIMEOUT))
            async for event in stream:
                await self._apply(event)
        except KubeError as e:
            if e.code == 410:
                raise Gone() from None
            raise

    async def _apply(self, event: dict[str, Any]) -> None:
        type_, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            return
        if type_ == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise Gone()
            raise KubeError(code, str(obj.get("reason", "")), str(obj.get("message", "")))
        version = _version(obj)
        if type_ == "BOOKMARK":
            self.version = version or self.version
            return
        obj = self._normalize(obj)
        key = _key(obj)
        old = self.known.get(key)
        if type_ == "DELETED":
            self.known.pop(key, None)
            await self.emit("delete", obj)
        elif type_ in ("ADDED", "MODIFIED"):
            self.known[key] = obj
            if old is None or _version(old) != version:  # never the same version twice
                await self.emit("add" if type_ == "ADDED" else "update", obj)
        self.version = version or self.version


def plan(
    source: ApiServerSource,
    sink: str,
    kubeconfig: Path | None,
    auth: Callable[[], dict[str, str] | None] | None = None,
) -> Plan:
    """`auth`: the source's own identity for its sink (authentication-oidc), else None."""
    return Plan(
        key=source.key,
        what=f"ApiServerSource {source.namespace}/{source.name}",
        fingerprint=(source.spec.dump(), sink, str(kubeconfig), auth is not None),
        work=lambda rt: ApiServerRun(source, sink, kubeconfig, rt, auth).run(),
    )


class ApiServerRun:
    """One leader's run of an ApiServerSource: discovery, then one watcher per collection."""

    def __init__(
        self,
        source: ApiServerSource,
        sink: str,
        kubeconfig: Path | None,
        rt: Runtime,
        auth: Callable[[], dict[str, str] | None] | None = None,
    ) -> None:
        self.auth = auth
        self.source = source
        self.sink = sink
        self.kubeconfig = kubeconfig
        self.rt = rt
        self.filter: EventFilter | None = (
            compile_filters(source.spec.filters) if source.spec.filters else None
        )
        self.namespaces: Watcher | None = None
        self.errors: dict[str, KubeError | None] = {}

    def _error(self, path: str, error: KubeError | None) -> None:
        self.errors[path] = error
        first = next((e for e in self.errors.values() if e is not None), None)
        if first is None:
            self.rt.report(None)
        else:
            reason = "Unauthorized" if first.code in (401, 403) else "ApiServerUnavailable"
            self.rt.report((reason, str(first)))

    async def run(self) -> None:
        kube = await self._connect()
        try:
            self.rt.status["ceSource"] = kube.host
            self.rt.changed()
            watchers = await self._watchers(kube)
            async with asyncio.TaskGroup() as group:
                if self.namespaces is not None:
                    w = self.namespaces
                    group.create_task(w.run(functools.partial(self._error, w.path)))
                for w in watchers:
                    group.create_task(w.run(functools.partial(self._error, w.path)))
        finally:
            await kube.close()

    async def _connect(self) -> Kube:
        delay = 1.0
        while True:
            try:
                return await Kube.connect(self.kubeconfig)
            except KubeError as e:
                self.rt.report(("KubeconfigInvalid", str(e)))
                log.warning("%s: %s; retrying in %.0fs", self.rt.what, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _discover(self, kube: Kube, res: ApiServerResource) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the API server's discovery document."""
        path = "/api/v1" if res.api_version == "v1" else f"/apis/{res.api_version}"
        delay = 1.0
        while True:
            try:
                doc = await kube.get(path)
                break
            except KubeError as e:
                if e.code == 404:
                    raise KubeError(404, "NotFound", f"API {res.api_version} not served") from None
                self._error(path, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._error(path, None)
        for r in doc.get("resources") or []:
            if r.get("kind") == res.kind and "/" not in str(r.get("name", "")):
                return str(r["name"]), bool(r.get("namespaced"))
        raise KubeError(404, "NotFound", f"kind {res.kind} not served by {res.api_version}")

    async def _watchers(self, kube: Kube) -> list[Watcher]:
        spec = self.source.spec
        selector: LabelSelector | None = spec.namespace_selector
        if selector is not None and not selector.empty:
            self.namespaces = Watcher(
                kube,
                "/api/v1/namespaces",
                "v1",
                "Namespace",
                selector.query(),
                self._namespace_changed,
            )
        out = []
        for res in spec.resources:
            try:
                plural, namespaced = await self._discover(kube, res)
            except KubeError as e:
                self.rt.report(("ResourceNotFound", str(e)))
                log.error("%s: %s; not watching it", self.rt.what, e)
                continue
            scope = self.source.namespace if namespaced and selector is None else None
            out.append(
                Watcher(
                    kube,
                    api_path(res.api_version, plural, scope),
                    res.api_version,
                    res.kind,
                    res.selector.query() if res.selector else "",
                    functools.partial(self._emit, kube.host, namespaced),
                )
            )
        return out

    async def _namespace_changed(self, _op: str, _obj: dict[str, Any]) -> None:
        self._publish_namespaces()

    def _publish_namespaces(self) -> None:
        w = self.namespaces
        if w is not None:
            names = sorted((o.get("metadata") or {}).get("name", "") for o in w.known.values())
            if self.rt.status.get("namespaces") != names:
                self.rt.status["namespaces"] = names
                self.rt.changed()

    def _allowed(self, namespace: str) -> bool:
        w = self.namespaces
        if w is None:
            return True
        return any((o.get("metadata") or {}).get("name") == namespace for o in w.known.values())

    async def _emit(self, ce_source: str, namespaced: bool, op: str, obj: dict[str, Any]) -> None:
        if namespaced and self.namespaces is not None:
            await self.namespaces.listed.wait()
            self._publish_namespaces()
            if not self._allowed((obj.get("metadata") or {}).get("namespace", "")):
                return
        owner = self.source.spec.owner
        if owner is not None and not controlled_by(obj, owner.api_version, owner.kind):
            return
        event = make_event(
            ce_source, op, obj, self.source.spec.mode == "Reference", self.source.extensions
        )
        if self.filter is not None and not self.filter.matches(event.attributes):
            return
        await deliver(
            self.rt.session,
            self.sink,
            event,
            namespace=self.source.namespace,
            what=self.rt.what,
            retry=APISERVER_RETRY,
            auth=self.auth,
        )
