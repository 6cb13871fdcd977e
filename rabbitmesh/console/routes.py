"""The console's routes (docs/console.md):

    GET  /console, /console/            the page (index.html)
    GET  /console/static/{file}         its script and style, shipped in this package
    GET  /console/api/info              what this server offers (auth, features, limits)
    GET  /console/api/resources         every resource, and the kinds with their API paths
    GET  /console/api/watch             changes of every resource, JSON lines (api/watch.py)
    GET  /console/api/rates             event counters per resource (rates.py)
    POST /console/api/check             200 when this caller may change things, else the
                                        admin API's 401/403/421
    POST /console/api/tail              the live tail (tail.py)

Reads are open, as the admin API's are. Every change the page makes (apply, delete,
redrive...) is a request to the admin API itself; the console adds none. The tail and the
check pass the admin API's change checks (`check_mutation`), so one rule decides who may
act, and the page learns it by asking. Pages are sent with a Content-Security-Policy that
allows only this origin's scripts, styles and connections and forbids framing (no
clickjacking of the buttons of a logged-in page).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from importlib import resources as package_files

from aiohttp import web

from rabbitmesh.api.auth import check_mutation
from rabbitmesh.api.errors import ApiError
from rabbitmesh.api.objects import discovery
from rabbitmesh.api.routes import started_plane
from rabbitmesh.api.watch import stream_matching
from rabbitmesh.console.rates import snapshot
from rabbitmesh.console.tail import Tails
from rabbitmesh.controlplane import ControlPlane
from rabbitmesh.resources.registry import by_kind
from rabbitmesh.settings import Settings
from rabbitmesh.store.manifests import key_of, render
from rabbitmesh.store.stream import StoreUnavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Headers of every console answer. `connect-src 'self'`: the page talks to this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _static_files() -> dict[str, bytes]:
    """Every file the page may load, read once: the package's static folder, nothing else
    (no path from the request ever reaches the file system)."""
    folder = package_files.files("rabbitmesh.console") / "static"
    out: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.is_file() and _FILE_NAME.match(entry.name):
            out[entry.name] = entry.read_bytes()
    return out


class Console:
    def __init__(
        self, plane: Callable[[], ControlPlane | None], settings: Settings, tails: Tails
    ) -> None:
        self._plane = plane
        self.settings = settings
        self.tails = tails
        self.files = _static_files()

    def routes(self) -> list[web.RouteDef]:
        # Every path has 3+ segments but /console/: the ingress' /{namespace}/{broker}
        # (a Broker in a namespace called "console") keeps working.
        return [
            web.get("/console", self.index),
            web.get("/console/", self.index),
            web.get("/console/static/{file}", self.static),
            web.get("/console/api/info", self._wrap(self.info)),
            web.get("/console/api/resources", self._wrap(self.resources)),
            web.get("/console/api/watch", self._wrap(self.watch)),
            web.get("/console/api/rates", self._wrap(self.rates)),
            web.post("/console/api/check", self._wrap(self.check)),
            web.post("/console/api/tail", self._wrap(self.tail)),
        ]

    def _wrap(self, fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                check_mutation(request, self.settings)  # nothing for GET; POSTs: the rules
                response = await fn(request)
            except ApiError as e:
                response = e.response()
            except StoreUnavailable as e:
                response = ApiError(503, str(e)).response()
            if not response.prepared:
                response.headers.update(SECURITY_HEADERS)
            return response

        handler.__name__ = f"console_{fn.__name__}"
        return handler

    @property
    def plane(self) -> ControlPlane:
        return started_plane(self._plane(), self.settings.retry_after_seconds)

    # --- the page ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self.files["index.html"],
            content_type="text/html",
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        body = self.files.get(name)
        suffix = name[name.rfind(".") :] if "." in name else ""
        if body is None or suffix not in STATIC_TYPES:
            return ApiError(404, f"the console has no file {name!r}").response()
        return web.Response(
            body=body, headers={**SECURITY_HEADERS, "Content-Type": STATIC_TYPES[suffix]}
        )

    # --- reading -------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        paths = {r.canonical for r in request.app.router.resources()}
        return web.json_response(
            {
                "auth": {
                    "tokenRequired": bool(s.admin_token),
                    "loopbackTrusted": s.admin_trust_loopback and not s.admin_token,
                },
                "features": {
                    # Issue 14's dead-letter API and Replay kind, where this server has them.
                    "deadLetters": any("deadletter" in p for p in paths),
                    "replays": by_kind("Replay") is not None,
                    "send": s.role in ("all", "ingress"),
                    "tail": s.console_max_tails > 0,
                },
                "limits": {
                    "tailRate": s.console_tail_rate,
                    "maxTails": s.console_max_tails,
                },
                "deadLetterPaths": sorted(p for p in paths if "deadletter" in p),
            }
        )

    async def resources(self, request: web.Request) -> web.StreamResponse:
        plane = self.plane
        items = sorted(plane.resources(), key=lambda r: (r.KIND, r.namespace, r.name))
        return web.json_response(
            {
                "kinds": discovery()["resources"],
                "resourceVersion": str(max(plane.reconciled_offset, 0)),
                "items": [render(r) for r in items],
                # Made by rabbitmesh for another resource: not deleted from the page.
                "derived": [list(key_of(r)) for r in items if plane.is_derived(key_of(r))],
            }
        )

    async def watch(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        # One of the RABBITMESH_MAX_WATCHES streams, as an admin API watch is.
        return await stream_matching(
            request,
            self.plane,
            lambda kind, ns: True,
            max_watches=s.max_watches,
            retry_after=s.retry_after_seconds,
        )

    async def rates(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(snapshot())

    # --- acting --------------------------------------------------------------------------

    async def check(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"canChange": True})

    async def tail(self, request: web.Request) -> web.StreamResponse:
        if self.settings.console_max_tails == 0:
            raise ApiError(403, "the live tail is turned off (RABBITMESH_CONSOLE_MAX_TAILS=0)")
        self.plane  # noqa: B018 (503 while starting)
        return await self.tails.handle(request)
