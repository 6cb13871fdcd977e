"""The admin API's routes (docs/contract.md §7), Kubernetes-shaped:

    GET          /apis                                              kinds this server knows
    GET          /apis/{group}/{version}/{plural}                   list, every namespace
    GET|POST     /apis/{group}/{version}/namespaces/{ns}/{plural}   list | create
    GET|PUT|PATCH|DELETE /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}
    GET          /api/v1/secrets, /api/v1/namespaces                list (Secrets redacted)
    GET|POST     /api/v1/namespaces/{ns}/secrets                    list | create
    GET|PUT|DELETE /api/v1/namespaces/{ns}/secrets/{name}
    POST         /api/v1/namespaces                                 create a Namespace
    GET|PUT|DELETE /api/v1/namespaces/{name}
    POST         /apply                                             create or update, many docs

Lists take `?watch=true` (rabbitmesh/api/watch.py); PATCH takes a JSON merge patch
(`application/merge-patch+json`, RFC 7386) onto the stored object.

Writes go to the resource store; the answer comes once this replica has reconciled the
change, so it shows the resource's status. 201 created, 200 otherwise; 400 malformed body or
a body that is not the object the URL names; 401/403 see rabbitmesh/api/auth.py; 404 unknown
type or object; 409 create of an existing name, or a stale resourceVersion; 422 invalid, with
every field path; 503 while the store is not read yet or RabbitMQ does not take the change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from rabbitmesh.api.auth import body_format, check_mutation
from rabbitmesh.api.deadletters import DeadLetterApi
from rabbitmesh.api.errors import ApiError
from rabbitmesh.api.objects import (
    api_version_of,
    check_target,
    describe,
    discovery,
    resolve_kind,
    restore_secret,
)
from rabbitmesh.api.parsing import Mode, Parser, build_resources, in_slices, prepare
from rabbitmesh.api.patch import MAX_PATCH_DEPTH, merge_patch
from rabbitmesh.api.watch import stream as watch_stream
from rabbitmesh.api.watch import wants_watch
from rabbitmesh.cloudevents.jsonformat import too_deep
from rabbitmesh.config.admission import check_cross_namespace, check_placements
from rabbitmesh.config.checks import ManifestChecks
from rabbitmesh.controlplane import ControlPlane
from rabbitmesh.http_input import BodyError, read_body
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.registry import KindInfo
from rabbitmesh.settings import Settings
from rabbitmesh.store.manifests import key_of, render, to_manifest
from rabbitmesh.store.state import Key, Outcome
from rabbitmesh.store.stream import StoreUnavailable

log = logging.getLogger("rabbitmesh.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Writes of one /apply in flight at once.
PARALLEL_WRITES = 32
MERGE_PATCH = "application/merge-patch+json"
#: A PATCH re-reads and re-applies this often when other writes keep coming in between.
PATCH_ATTEMPTS = 5


class AdminApi:
    def __init__(self, plane: Callable[[], ControlPlane | None], settings: Settings) -> None:
        self._plane = plane
        self.settings = settings
        self.parser = Parser(settings.manifest_parse_timeout)

    def close(self) -> None:
        """Stop the parser's worker process."""
        self.parser.close()

    def routes(self) -> list[web.RouteDef]:
        return [
            *DeadLetterApi(self).routes(),
            web.get("/apis", self._wrap(self.discovery)),
            web.route("*", "/apply", self._wrap(self.apply)),
            web.get("/apis/{group}/{version}/{plural}", self._wrap(self.list_everywhere)),
            web.route(
                "*",
                "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
                self._wrap(self.coll),
            ),
            web.route(
                "*",
                "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
                self._wrap(self.item),
            ),
            web.route("*", "/api/v1/{plural}", self._wrap(self.core_top)),
            web.route("*", "/api/v1/{plural}/{name}", self._wrap(self.core_top_item)),
            web.route("*", "/api/v1/namespaces/{namespace}/{plural}", self._wrap(self.core_coll)),
            web.route(
                "*", "/api/v1/namespaces/{namespace}/{plural}/{name}", self._wrap(self.core_item)
            ),
        ]

    def _wrap(self, fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                check_mutation(request, self.settings)
                return await fn(request)
            except ApiError as e:
                return e.response()
            except StoreUnavailable as e:
                return ApiError(
                    503, str(e), headers={"Retry-After": str(self.settings.retry_after_seconds)}
                ).response()

        handler.__name__ = f"api_{fn.__name__}"
        return handler

    @property
    def plane(self) -> ControlPlane:
        return started_plane(self._plane(), self.settings.retry_after_seconds)

    # --- dispatch by path and method -------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(discovery())

    async def list_everywhere(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        info = resolve_kind(m["group"], m["version"], m["plural"])
        return await self._list_or_watch(request, info, None)

    async def coll(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        info = resolve_kind(m["group"], m["version"], m["plural"])
        return await self._collection(request, info, m["version"], m["namespace"])

    async def item(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        info = resolve_kind(m["group"], m["version"], m["plural"])
        return await self._item(request, info, m["version"], m["namespace"], m["name"])

    async def core_top(self, request: web.Request) -> web.StreamResponse:
        info = resolve_kind("", "v1", request.match_info["plural"])
        if info.model.NAMESPACED:
            if request.method != "GET":
                raise ApiError(
                    405, f"{request.method} needs /api/v1/namespaces/{{ns}}/{info.plural}"
                )
            return await self._list_or_watch(request, info, None)
        return await self._collection(request, info, "v1", None)

    async def core_top_item(self, request: web.Request) -> web.StreamResponse:
        info = resolve_kind("", "v1", request.match_info["plural"])
        if info.model.NAMESPACED:
            raise ApiError(404, f"{info.plural} are namespaced: use /api/v1/namespaces/{{ns}}/...")
        return await self._item(request, info, "v1", None, request.match_info["name"])

    async def core_coll(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        info = resolve_kind("", "v1", m["plural"])
        return await self._collection(request, info, "v1", m["namespace"])

    async def core_item(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        info = resolve_kind("", "v1", m["plural"])
        return await self._item(request, info, "v1", m["namespace"], m["name"])

    async def _collection(
        self, request: web.Request, info: KindInfo, version: str, namespace: str | None
    ) -> web.StreamResponse:
        self._scope(info, namespace)
        if request.method in ("GET", "HEAD"):
            return await self._list_or_watch(request, info, namespace)
        if request.method == "POST":
            return await self._create(request, info, version, namespace)
        raise ApiError(405, f"{request.method} is not allowed here", headers={"Allow": "GET, POST"})

    async def _item(
        self,
        request: web.Request,
        info: KindInfo,
        version: str,
        namespace: str | None,
        name: str,
    ) -> web.StreamResponse:
        self._scope(info, namespace)
        key: Key = (info.kind, namespace or "", name)
        if request.method in ("GET", "HEAD"):
            return web.json_response(render(self._get(key)))
        if request.method == "PUT":
            return await self._replace(request, info, version, key)
        if request.method == "DELETE":
            return await self._delete(key)
        if request.method == "PATCH":
            return await self._patch(request, info, version, key)
        raise ApiError(
            405,
            f"{request.method} is not allowed here",
            headers={"Allow": "GET, PUT, PATCH, DELETE"},
        )

    def _scope(self, info: KindInfo, namespace: str | None) -> None:
        if info.model.NAMESPACED and namespace is None:
            raise ApiError(404, f"{info.plural} are namespaced: name a namespace in the path")
        if not info.model.NAMESPACED and namespace is not None:
            raise ApiError(404, f"{info.plural} are not namespaced")

    # --- reading ---------------------------------------------------------------------------

    def _get(self, key: Key) -> Resource:
        res = self.plane.resource(*key)
        if res is None:
            kind, ns, name = key
            where = f" in namespace {ns!r}" if ns else ""
            raise ApiError(404, f"{kind} {name!r} not found{where}")
        return res

    async def _list_or_watch(
        self, request: web.Request, info: KindInfo, namespace: str | None
    ) -> web.StreamResponse:
        if wants_watch(request):
            return await watch_stream(
                request,
                self.plane,
                info,
                namespace,
                max_watches=self.settings.max_watches,
                retry_after=self.settings.retry_after_seconds,
            )
        return self._list(info, namespace)

    def _list(self, info: KindInfo, namespace: str | None) -> web.StreamResponse:
        plane = self.plane
        items = [
            r
            for r in plane.resources()
            if r.KIND == info.kind and (namespace is None or r.namespace == namespace)
        ]
        items.sort(key=lambda r: (r.namespace, r.name))
        return web.json_response(
            {
                "apiVersion": api_version_of(info),
                "kind": f"{info.kind}List",
                # What the list shows was reconciled up to here: a watch from it misses nothing.
                "metadata": {"resourceVersion": str(max(plane.reconciled_offset, 0))},
                "items": [render(r) for r in items],
            }
        )

    # --- writing ---------------------------------------------------------------------------

    async def _manifest_body(self, request: web.Request) -> bytes:
        """The raw body of a change, read within RABBITMESH_MAX_MANIFEST_BYTES and
        RABBITMESH_REQUEST_TIMEOUT (413/408 as ApiError)."""
        s = self.settings
        try:
            return await read_body(
                request,
                s.max_manifest_bytes,
                s.request_timeout,
                limit_name="RABBITMESH_MAX_MANIFEST_BYTES",
            )
        except BodyError as e:
            raise ApiError(e.status, e.message) from None

    async def _documents(self, request: web.Request, mode: Mode) -> list[Any]:
        """The body's documents, checked (rabbitmesh/api/parsing.py)."""
        raw = await self._manifest_body(request)
        fmt = body_format(request.content_type)
        assert fmt is not None, "check_mutation refused other types"
        return await self.parser.documents(raw, fmt, mode)

    async def _body(
        self, request: web.Request, info: KindInfo, version: str, namespace: str | None
    ) -> tuple[Resource, dict[str, Any]]:
        docs = await self._documents(request, ("one", info.kind, version, namespace))
        (res,) = await build_resources(docs, ManifestChecks(self.plane.ctx.names), single=True)
        return res, docs[0]

    async def _create(
        self, request: web.Request, info: KindInfo, version: str, namespace: str | None
    ) -> web.StreamResponse:
        plane = self.plane
        res, _ = await self._body(request, info, version, namespace)
        check_target(res, info, namespace)
        key = key_of(res)
        if plane.resource(*key) is not None:
            raise ApiError(409, f"{describe(res)} already exists", reason="AlreadyExists")
        res = restore_secret(res, None)
        outcome = await self._write(res, expect="absent")
        return web.json_response(self._written(res, outcome), status=201)

    async def _replace(
        self, request: web.Request, info: KindInfo, version: str, key: Key
    ) -> web.StreamResponse:
        plane = self.plane
        namespace = key[1] or None
        res, doc = await self._body(request, info, version, namespace)
        check_target(res, info, namespace, key[2])
        expect: str | int = "present"
        rv = (doc.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, ""):
            try:
                expect = int(rv)
            except (TypeError, ValueError):
                raise ApiError(
                    422,
                    f"invalid metadata.resourceVersion {rv!r}",
                    details=[{"field": "metadata.resourceVersion", "message": "not a version"}],
                ) from None
        if plane.is_derived(key):
            expect = "absent"  # the stored object takes over from the one rabbitmesh made
        res = restore_secret(res, plane.store.get(key))
        outcome = await self._write(res, expect=expect)
        return web.json_response(self._written(res, outcome))

    async def _patch(
        self, request: web.Request, info: KindInfo, version: str, key: Key
    ) -> web.StreamResponse:
        """RFC 7386 merge patch onto the stored manifest, written compare-and-swap (retried
        when another write came in between, as Kubernetes retries a patch)."""
        if request.content_type != MERGE_PATCH:
            raise ApiError(
                415,
                f"PATCH takes {MERGE_PATCH} (RFC 7386), not {request.content_type or 'nothing'}",
                headers={"Accept-Patch": MERGE_PATCH},
            )
        raw = await self._manifest_body(request)
        try:
            patch = orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError) as e:
            raise ApiError(400, f"malformed merge patch: {e}") from None
        if not isinstance(patch, dict):
            raise ApiError(400, "a merge patch must be a JSON object")
        if too_deep(patch, MAX_PATCH_DEPTH):
            raise ApiError(400, f"merge patch nested deeper than {MAX_PATCH_DEPTH} levels")
        plane = self.plane
        namespace = key[1] or None
        for _ in range(PATCH_ATTEMPTS):
            stored = plane.store.get(key)
            if stored is None:
                self._get(key)  # 404 when it does not exist at all
                raise ApiError(409, f"{key[0]} {key[2]!r} is made by rabbitmesh: PUT it to own it")
            doc = merge_patch(stored.manifest, patch)
            if not isinstance(doc.get("metadata"), dict):
                raise ApiError(422, "metadata must stay an object", details=[{"field": "metadata"}])
            docs = prepare([doc], ("one", info.kind, version, namespace))
            (res,) = await build_resources(docs, ManifestChecks(plane.ctx.names), single=True)
            check_target(res, info, namespace, key[2])
            res = restore_secret(res, stored)
            self._admit(res)
            outcome = await plane.store.apply(
                to_manifest(res), key, origin="api", expect=stored.resource_version
            )
            if outcome.result == "conflict" and "was changed" in outcome.message:
                continue  # someone wrote in between: patch the newer version
            self._check(outcome, res)
            if outcome.result in ("created", "configured"):
                log.info("api: %s patched", describe(res))
                await plane.wait_reconciled(outcome.offset)
            return web.json_response(self._written(res, outcome))
        raise ApiError(409, f"{describe(res)} changed too often while patching; retry")

    async def _delete(self, key: Key) -> web.StreamResponse:
        plane = self.plane
        res = self._get(key)
        if plane.is_derived(key):
            owners = res.metadata.owner_references or [{}]
            owner = f"{owners[0].get('kind', '?')} {owners[0].get('name', '?')}"
            raise ApiError(
                409,
                f"{describe(res)} is made by rabbitmesh for {owner}; it goes when {owner} goes "
                "(or no longer asks for it)",
            )
        outcome = await plane.store.delete(key)
        self._check(outcome, res)
        log.info("api: %s deleted", describe(res))
        await plane.wait_reconciled(outcome.offset)
        return web.json_response(render(res))

    def _admit(self, res: Resource, index: int | None = None) -> None:
        """422 for a write RabbitMQ cannot carry out (a broker with triggers moved:
        rabbitmesh/config/admission.py)."""
        plane = self.plane
        try:
            check_placements(plane.settings, plane.ctx.resources, plane.ctx.placements, res)
            check_cross_namespace(plane.settings, plane.ctx.resources, res)
        except FieldError as e:
            detail: dict[str, Any] = {"field": e.path, "message": e.message}
            if index is not None:
                detail["document"] = index
            raise ApiError(
                422, f"invalid {describe(res)}: {e.path}: {e.message}", details=[detail]
            ) from None

    async def _write(self, res: Resource, *, expect: str | int | None) -> Outcome:
        plane = self.plane
        self._admit(res)
        outcome = await plane.store.apply(
            to_manifest(res), key_of(res), origin="api", expect=expect
        )
        if outcome.result == "conflict" and outcome.entry is not None:
            # What this write lost to is in the store before it: a GET here right after the
            # 409 must show the winner (as after a 201), so wait for the winner's reconcile.
            await plane.wait_reconciled(outcome.entry.resource_version)
        self._check(outcome, res)
        if outcome.result in ("created", "configured"):
            log.info("api: %s %s", describe(res), outcome.result)
            await plane.wait_reconciled(outcome.offset)
        return outcome

    def _check(self, outcome: Outcome, res: Resource) -> None:
        if outcome.result == "conflict":
            reason = "AlreadyExists" if "already exists" in outcome.message else "Conflict"
            raise ApiError(409, outcome.message, reason=reason)
        if outcome.result == "notfound":
            raise ApiError(404, f"{describe(res)} not found")

    def _written(self, res: Resource, outcome: Outcome) -> dict[str, Any]:
        live = self.plane.resource(*key_of(res))
        return render(live if live is not None else res)

    # --- /apply ----------------------------------------------------------------------------

    async def apply(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            raise ApiError(405, "use POST /apply", headers={"Allow": "POST"})
        plane = self.plane
        namespace = request.query.get("namespace")
        dry_run = request.query.get("dryRun", "").lower() in ("all", "true", "1")
        docs = await self._documents(request, ("apply", namespace))
        built = await build_resources(docs, ManifestChecks(self.plane.ctx.names))
        # Every step over all resources runs in slices (in_slices): a large /apply must not
        # hold the loop (issue 11).
        resources = await in_slices(built, lambda r: restore_secret(r, plane.store.get(key_of(r))))
        sem = asyncio.Semaphore(PARALLEL_WRITES)

        def decide(res: Resource) -> tuple[str, dict[str, Any]]:
            """ "unchanged", what a dry run would do, or "write"; and the manifest."""
            manifest = to_manifest(res)
            stored = plane.store.get(key_of(res))
            if stored is not None and stored.manifest == manifest:
                return "unchanged", manifest
            if dry_run:
                return ("configured" if stored is not None else "created"), manifest
            return "write", manifest

        async def write(res: Resource, manifest: dict[str, Any]) -> tuple[str, int]:
            async with sem:
                outcome = await plane.store.apply(manifest, key_of(res), origin="api")
            if outcome.result in ("created", "configured"):
                log.info("api: %s %s", describe(res), outcome.result)
                return outcome.result, outcome.offset
            return outcome.result, -1

        decided = await in_slices(resources, decide)
        todo = [i for i, (what, _) in enumerate(decided) if what == "write"]
        for i in todo:  # an /apply that would move a broker with triggers changes nothing
            self._admit(resources[i], i + 1)
        written = await asyncio.gather(*(write(resources[i], decided[i][1]) for i in todo))
        results = [what for what, _ in decided]
        for i, (result, _) in zip(todo, written, strict=True):
            results[i] = result
        changed = max((offset for _, offset in written), default=-1)
        if changed >= 0:
            await plane.wait_reconciled(changed)
        items = await in_slices(
            resources, lambda r: render(r if dry_run else plane.resource(*key_of(r)) or r)
        )
        body = {
            "apiVersion": "v1",
            "kind": "List",
            "results": [
                {
                    "apiVersion": r.api_version,
                    "kind": r.KIND,
                    "namespace": r.namespace or None,
                    "name": r.name,
                    "result": result,
                }
                for r, result in zip(resources, results, strict=True)
            ],
            "items": items,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def started_plane(plane: ControlPlane | None, retry_after: int) -> ControlPlane:
    """The control plane once its resource store is read; else 503 with Retry-After (the
    admin API and the console answer alike while starting up)."""
    if plane is None or not plane.started:
        raise ApiError(
            503,
            "starting up: the resource store is not read yet",
            headers={"Retry-After": str(retry_after)},
        )
    return plane
