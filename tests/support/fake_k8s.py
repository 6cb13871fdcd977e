"""A small Kubernetes API server for ApiServerSource tests, speaking the real wire protocol.

What it serves, as kube-apiserver does:
- discovery: `GET /api/v1`, `GET /apis/{group}/{version}` (APIResourceList);
- list: `GET .../{plural}` (cluster-wide or `/namespaces/{ns}/...`) with `labelSelector`,
  `limit` and `continue`; the list's `metadata.resourceVersion`; items without kind and
  apiVersion (as the real server sends them);
- watch: `?watch=true&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=S]`: a
  chunked response of newline-delimited JSON events (ADDED, MODIFIED, DELETED, BOOKMARK), from
  its event history after N, then live; label selectors turn an object leaving (entering) the
  selection into DELETED (ADDED);
- a resourceVersion older than the compacted history: an ERROR event holding a Status with
  code 410 (`gone_as="event"`, what kube-apiserver does) or an HTTP 410 (`gone_as="http"`);
- bearer-token authentication (401 Status otherwise).

Tests drive it directly: create/update/delete objects, `compact()` the history, end or break
the open watches, hold new watches back, send bookmarks; `requests` records what came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

TOKEN = "fake-token"

#: (apiVersion, plural) -> (kind, namespaced)
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "pods"): ("Pod", True),
    ("v1", "configmaps"): ("ConfigMap", True),
    ("v1", "namespaces"): ("Namespace", False),
    ("v1", "nodes"): ("Node", False),
    ("apps/v1", "deployments"): ("Deployment", True),
    ("apps/v1", "replicasets"): ("ReplicaSet", True),
}


def parse_selector(text: str) -> list[tuple[str, str, list[str]]]:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` -> [(key, op, values)]."""
    out = []
    for part in re.split(r",(?![^()]*\))", text):
        part = part.strip()
        if not part:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", part):
            out.append((m[1], m[2], [v.strip() for v in m[3].split(",") if v.strip()]))
        elif m := re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", part):
            out.append((m[1], "!=" if m[2] == "!=" else "=", [m[3]]))
        elif part.startswith("!"):
            out.append((part[1:], "!", []))
        else:
            out.append((part, "exists", []))
    return out


def selected(obj: dict[str, Any] | None, selector: list[tuple[str, str, list[str]]]) -> bool:
    if obj is None:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, values in selector:
        value = labels.get(key)
        if op == "=" and value != values[0]:
            return False
        if op == "!=" and value == values[0]:
            return False
        if op == "in" and value not in values:
            return False
        if op == "notin" and value in values:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


@dataclass
class Change:
    version: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: tuple[str, str]
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass(eq=False)
class Watch:
    resource: tuple[str, str]
    namespace: str | None
    selector: list[tuple[str, str, list[str]]]
    queue: asyncio.Queue[Change | str] = field(default_factory=asyncio.Queue)
    request: web.Request | None = None


class FakeKube:
    def __init__(self, gone_as: str = "event") -> None:
        self.gone_as = gone_as
        self.version = 1000
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {
            r: {} for r in RESOURCES
        }
        self.history: list[Change] = []
        self.compacted = 0
        self.watches: set[Watch] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.open = asyncio.Event()
        self.open.set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- server ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeKube:
        app = web.Application()
        app.router.add_get("/api/v1", self._discovery)
        app.router.add_get("/apis/{group}/{version}", self._discovery)
        app.router.add_get("/api/{version}/{plural}", self._collection)
        app.router.add_get("/api/{version}/namespaces/{namespace}/{plural}", self._collection)
        app.router.add_get("/apis/{group}/{version}/{plural}", self._collection)
        app.router.add_get(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}", self._collection
        )
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.open.set()
        for w in list(self.watches):
            w.queue.put_nowait("end")
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "{self.url}"}}
users:
- name: tester
  user: {{token: {TOKEN}}}
contexts:
- name: fake
  context: {{cluster: fake, user: tester}}
current-context: fake
"""
        )
        return path

    def watch_requests(self) -> list[dict[str, str]]:
        return [q for _, q in self.requests if q.get("watch") in ("true", "1")]

    def list_requests(self) -> list[tuple[str, dict[str, str]]]:
        return [(p, q) for p, q in self.requests if q.get("watch") not in ("true", "1")]

    # --- objects -----------------------------------------------------------------------------

    def _commit(self, type_: str, resource: tuple[str, str], old: Any, new: dict) -> dict:
        self.version += 1
        new["metadata"]["resourceVersion"] = str(self.version)
        change = Change(self.version, type_, resource, old, copy.deepcopy(new))
        self.history.append(change)
        for w in list(self.watches):
            if w.resource == resource:
                w.queue.put_nowait(change)
        return new

    def create(
        self,
        kind: str,
        name: str,
        namespace: str | None = "default",
        *,
        api_version: str = "v1",
        labels: dict[str, str] | None = None,
        owner: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        resource = self._resource(api_version, kind)
        meta: dict[str, Any] = {"name": name, "uid": str(uuid.uuid4())}
        if namespace is not None and RESOURCES[resource][1]:
            meta["namespace"] = namespace
        if labels:
            meta["labels"] = labels
        if owner:
            meta["ownerReferences"] = [{"uid": str(uuid.uuid4()), "controller": True, **owner}]
        obj = {"apiVersion": api_version, "kind": kind, "metadata": meta, **fields}
        self.objects[resource][(meta.get("namespace", ""), name)] = obj
        return copy.deepcopy(self._commit("ADDED", resource, None, obj))

    def update(
        self,
        kind: str,
        name: str,
        namespace: str | None = "default",
        *,
        api_version: str = "v1",
        labels: dict[str, str] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        resource = self._resource(api_version, kind)
        ns = namespace if RESOURCES[resource][1] else ""
        obj = self.objects[resource][(ns or "", name)]
        old = copy.deepcopy(obj)
        if labels is not None:
            obj["metadata"]["labels"] = labels
        obj.update(fields)
        return copy.deepcopy(self._commit("MODIFIED", resource, old, obj))

    def delete(
        self, kind: str, name: str, namespace: str | None = "default", *, api_version: str = "v1"
    ) -> dict[str, Any]:
        resource = self._resource(api_version, kind)
        ns = namespace if RESOURCES[resource][1] else ""
        obj = self.objects[resource].pop((ns or "", name))
        return copy.deepcopy(self._commit("DELETED", resource, copy.deepcopy(obj), obj))

    def _resource(self, api_version: str, kind: str) -> tuple[str, str]:
        return next(r for r, (k, _) in RESOURCES.items() if r[0] == api_version and k == kind)

    # --- test controls -----------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the history: resuming from any version seen so far gets 410."""
        self.compacted = self.version
        self.history.clear()

    def end_watches(self) -> None:
        """The server ends every open watch normally (as at timeoutSeconds)."""
        for w in list(self.watches):
            w.queue.put_nowait("end")

    def break_watches(self) -> None:
        """Connections drop mid-stream, without a proper end."""
        for w in list(self.watches):
            w.queue.put_nowait("break")

    def bookmark(self) -> None:
        for w in list(self.watches):
            w.queue.put_nowait("bookmark")

    # --- handlers ----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def _discovery(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return status_response(401, "Unauthorized", "no or wrong token")
        gv = "v1" if request.path == "/api/v1" else "/".join(request.path.split("/")[2:4])
        resources = [
            {"name": plural, "namespaced": namespaced, "kind": kind, "verbs": ["list", "watch"]}
            for (api_version, plural), (kind, namespaced) in RESOURCES.items()
            if api_version == gv
        ]
        if not resources:
            return status_response(404, "NotFound", f"{gv} not served")
        return web.json_response(
            {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}
        )

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.path, query))
        if not self._authorized(request):
            return status_response(401, "Unauthorized", "no or wrong token")
        m = request.match_info
        api_version = f"{m['group']}/{m['version']}" if "group" in m else m["version"]
        resource = (api_version, m["plural"])
        if resource not in RESOURCES:
            return status_response(404, "NotFound", f"{request.path} not found")
        namespace = m.get("namespace")
        selector = parse_selector(query.get("labelSelector", ""))
        if query.get("watch") in ("true", "1"):
            return await self._watch(request, resource, namespace, selector, query)
        return self._list(resource, namespace, selector, query)

    def _in_scope(self, obj: dict | None, namespace: str | None) -> bool:
        return obj is not None and (
            namespace is None or (obj.get("metadata") or {}).get("namespace") == namespace
        )

    def _list(self, resource, namespace, selector, query) -> web.Response:
        items = [
            o
            for o in self.objects[resource].values()
            if self._in_scope(o, namespace) and selected(o, selector)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        bare = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        kind = RESOURCES[resource][0]
        return web.json_response(
            {"kind": f"{kind}List", "apiVersion": resource[0], "metadata": meta, "items": bare}
        )

    async def _watch(self, request, resource, namespace, selector, query) -> web.StreamResponse:
        await self.open.wait()
        since = query.get("resourceVersion")
        if since not in (None, "", "0") and int(since) < self.compacted:
            if self.gone_as == "http":
                return status_response(410, "Expired", f"too old resource version: {since}")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if since not in (None, "", "0") and int(since) < self.compacted:
            await self._send(resp, "ERROR", status_object(410, "Expired", f"too old: {since}"))
            return resp
        watch = Watch(resource, namespace, selector, request=request)
        self.watches.add(watch)
        timeout = float(query.get("timeoutSeconds") or 3600)
        try:
            if since in (None, "", "0"):
                for obj in list(self.objects[resource].values()):
                    if self._in_scope(obj, namespace) and selected(obj, selector):
                        await self._send(resp, "ADDED", obj)
            else:
                for change in [c for c in self.history if c.version > int(since)]:
                    await self._forward(resp, watch, change)
            async with asyncio.timeout(timeout):
                while True:
                    item = await watch.queue.get()
                    if item == "end":
                        break
                    if item == "break":
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                    if item == "bookmark":
                        if query.get("allowWatchBookmarks") == "true":
                            bm = {
                                "kind": RESOURCES[resource][0],
                                "apiVersion": resource[0],
                                "metadata": {"resourceVersion": str(self.version)},
                            }
                            await self._send(resp, "BOOKMARK", bm)
                        continue
                    assert isinstance(item, Change)
                    await self._forward(resp, watch, item)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self.watches.discard(watch)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    async def _forward(self, resp: web.StreamResponse, watch: Watch, change: Change) -> None:
        if not self._in_scope(change.new, watch.namespace):
            return
        was = change.old is not None and selected(change.old, watch.selector)
        now = selected(change.new, watch.selector)
        type_ = change.type
        if type_ == "MODIFIED" and was and not now:
            type_ = "DELETED"
        elif type_ == "MODIFIED" and now and not was:
            type_ = "ADDED"
        elif not (now or (type_ == "DELETED" and was)):
            return
        await self._send(resp, type_, change.new)

    async def _send(self, resp: web.StreamResponse, type_: str, obj: dict) -> None:
        await resp.write(orjson.dumps({"type": type_, "object": obj}) + b"\n")


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def status_response(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_object(code, reason, message), status=code)
