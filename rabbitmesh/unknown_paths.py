"""JSON answers for paths and methods no route takes, naming the paths that exist.

aiohttp answers those itself with a plain-text `404: Not Found`; a user who forgot the
namespace (`POST /br1`) learns nothing from it. Every other error here is JSON with an
`error` field, so these are too. A catch-all route added last does it rather than a
middleware, which would wrap every request, ingress included.
"""

from __future__ import annotations

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
    "GET /console",
)


def catch_all() -> web.RouteDef:
    """Add it after every other route: it takes what none of them took."""
    return web.route("*", "/{tail:.*}", unknown_path)


async def unknown_path(request: web.Request) -> web.Response:
    # A path another route serves, with a method it does not take: 405, as aiohttp would.
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        allow = ", ".join(sorted(allowed))
        return web.json_response(
            {
                "error": f"method {request.method} not allowed on {request.path}; use {allow}",
                "code": 405,
                "reason": "MethodNotAllowed",
            },
            status=405,
            headers={"Allow": allow},
        )
    return web.json_response(
        {"error": _message(request), "code": 404, "reason": "NotFound"}, status=404
    )


def _message(request: web.Request) -> str:
    what = f"no such path: {request.method} {request.path}"
    segments = [s for s in request.path.split("/") if s]
    if len(segments) == 1 and request.method == "POST":
        # The usual mistake: a broker's name without its namespace.
        what += f" (a broker's path has its namespace: /default/{segments[0]}?)"
    return f"{what}; the paths served are {', '.join(PATH_FORMS)}"
