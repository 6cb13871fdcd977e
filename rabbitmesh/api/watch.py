"""`GET <list path>?watch=true[&resourceVersion=N][&timeoutSeconds=S]`: a stream of JSON lines.

Without resourceVersion (or with 0) it starts with an ADDED event for every object the list
would show, then streams changes; with one it streams the changes after it (410 Gone when they
are no longer kept: list again). Each line is `{"type": "ADDED|MODIFIED|DELETED", "object":
...}`, with Secrets redacted as in every answer. The stream ends after timeoutSeconds (default:
never), when the client goes, or when the client reads too slowly to keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
from aiohttp import web

from rabbitmesh.api.errors import ApiError
from rabbitmesh.api.objects import render
from rabbitmesh.controlplane import ControlPlane
from rabbitmesh.resources.registry import KindInfo
from rabbitmesh.watch import Event, Expired


def wants_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1")


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"{name} must be an integer, not {raw!r}", details=[{"field": name}]
        ) from None
    if value < 0:
        raise ApiError(400, f"{name} must not be negative", details=[{"field": name}])
    return value


async def stream(
    request: web.Request, plane: ControlPlane, info: KindInfo, namespace: str | None
) -> web.StreamResponse:
    def wanted(kind: str, ns: str) -> bool:
        return kind == info.kind and (namespace is None or ns == namespace)

    return await stream_matching(request, plane, wanted)


async def stream_matching(
    request: web.Request, plane: ControlPlane, wanted: Callable[[str, str], bool]
) -> web.StreamResponse:
    """The watch of every resource for which `wanted(kind, namespace)` (the console watches
    all kinds in one stream: browsers open at most six connections to a server)."""
    since = _int_query(request, "resourceVersion")
    timeout = _int_query(request, "timeoutSeconds")

    def matches(e: Event) -> bool:
        return wanted(e.kind, e.namespace)

    watcher = plane.watch.subscribe()  # before reading the backlog: nothing falls between
    try:
        if since:
            try:
                backlog = [e.line for e in plane.watch.since(since) if matches(e)]
            except Expired as e:
                raise ApiError(410, str(e), reason="Expired") from None
            seen = max((e.version for e in plane.watch.since(since)), default=since)
        else:
            seen = plane.reconciled_offset
            items = [r for r in plane.resources() if wanted(r.KIND, r.namespace)]
            items.sort(key=lambda r: (r.namespace, r.name))
            backlog = [orjson.dumps({"type": "ADDED", "object": render(r)}) + b"\n" for r in items]
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for line in backlog:
            await response.write(line)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(timeout):
                while True:
                    event = await watcher.queue.get()
                    if event is None:
                        break  # too slow: the client resumes from its last resourceVersion
                    if event.version < seen and not since:
                        continue  # already in the ADDED list
                    if matches(event):
                        await response.write(event.line)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    finally:
        plane.watch.unsubscribe(watcher)
