"""JSON answers for paths and methods no route takes, naming the paths that exist.

aiohttp answers those itself with a plain-text `404: Not Found`; a user who forgot the
namespace (`POST /br1`) learns nothing from it. Every other error here is JSON with an
`error` field, so these are too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

#: The path forms `rabbitmesh run` serves (docs/contract.md).
PATH_FORMS = (
    "POST /{namespace}/{broker}",
    "POST /channels/{namespace}/{name}",
    "POST /sequences/{namespace}/{name}",
    "POST /parallels/{namespace}/{name}",
    "POST /sources/gitlab/{namespace}/{name}",
    "/apis/{group}/{version}/namespaces/{namespace}/{plural}[/{name}]",
    "/api/v1/namespaces/{namespace}/secrets[/{name}]",
    "POST /apply",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _message(request: web.Request) -> str:
    what = f"no such path: {request.method} {request.path}"
    segments = [s for s in request.path.split("/") if s]
    if len(segments) == 1 and request.method == "POST":
        # The usual mistake: a broker's name without its namespace.
        what += f" (a broker's path has its namespace: /default/{segments[0]}?)"
    return f"{what}; the paths served are {', '.join(PATH_FORMS)}"


@web.middleware
async def json_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as e:
        allow = ", ".join(sorted(e.allowed_methods))
        return web.json_response(
            {
                "error": f"method {request.method} not allowed on {request.path}; use {allow}",
                "code": 405,
                "reason": "MethodNotAllowed",
            },
            status=405,
            headers={"Allow": allow},
        )
    except web.HTTPNotFound as e:
        if e.text and e.text != "404: Not Found":  # a handler's own 404 keeps its text
            raise
        return web.json_response(
            {"error": _message(request), "code": 404, "reason": "NotFound"}, status=404
        )
