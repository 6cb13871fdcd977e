"""`GET <list path>?watch=true[&resourceVersion=N][&timeoutSeconds=S]`: a stream of JSON lines.

Without resourceVersion (or with 0) it starts with an ADDED event for every object the list
would show, then streams changes; with one it streams the changes after it (410 Gone when they
are no longer kept: list again). Each line is `{"type": "ADDED|MODIFIED|DELETED", "object":
...}`, with Secrets redacted as in every answer. The stream ends after timeoutSeconds (default:
never), when the client goes (noticed within CLIENT_CHECK_SECONDS even when nothing changes),
or when the client reads too slowly to keep up. At most RABBITMESH_MAX_WATCHES streams are
open at once (GET is open to anyone: each stream costs memory and a fan-out on every change);
past that, 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
from aiohttp import web

from rabbitmesh.api.errors import ApiError
from rabbitmesh.controlplane import ControlPlane
from rabbitmesh.resources.registry import KindInfo
from rabbitmesh.store.manifests import render
from rabbitmesh.watch import Event, Expired

#: Largest resourceVersion / timeoutSeconds taken: a timeout of 400 digits overflowed the
#: event loop's clock after the 200 was sent (a cut-off stream and a traceback).
MAX_QUERY_INT = 2**53


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
    if not 0 <= value <= MAX_QUERY_INT:
        raise ApiError(
            400, f"{name} must be between 0 and {MAX_QUERY_INT}", details=[{"field": name}]
        )
    return value


#: How often a stream with nothing to send checks that its client is still connected, so a
#: departed client frees its slot (of RABBITMESH_MAX_WATCHES) without waiting for a change.
CLIENT_CHECK_SECONDS = 2.0


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(
    request: web.Request,
    plane: ControlPlane,
    info: KindInfo,
    namespace: str | None,
    *,
    max_watches: int,
    retry_after: int,
) -> web.StreamResponse:
    def wanted(kind: str, ns: str) -> bool:
        return kind == info.kind and (namespace is None or ns == namespace)

    return await stream_matching(
        request, plane, wanted, max_watches=max_watches, retry_after=retry_after
    )


async def stream_matching(
    request: web.Request,
    plane: ControlPlane,
    wanted: Callable[[str, str], bool],
    *,
    max_watches: int,
    retry_after: int,
) -> web.StreamResponse:
    """The watch of every resource for which `wanted(kind, namespace)` (the console watches
    all kinds in one stream: browsers open at most six connections to a server)."""
    since = _int_query(request, "resourceVersion")
    timeout = _int_query(request, "timeoutSeconds")
    if plane.watch.watching >= max_watches:
        raise ApiError(
            429,
            f"too many open watch streams (limit {max_watches}, RABBITMESH_MAX_WATCHES)",
            headers={"Retry-After": str(retry_after)},
        )

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
                    try:
                        async with asyncio.timeout(CLIENT_CHECK_SECONDS):
                            event = await watcher.queue.get()
                    except TimeoutError:
                        if _client_gone(request):
                            break
                        continue
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
