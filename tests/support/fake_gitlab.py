"""A fake GitLab REST API (project hooks only) that checks what it receives.

`/api/v4/projects/{id}/hooks` (GET, POST) and `/api/v4/projects/{id}/hooks/{hook_id}` (PUT,
DELETE), as GitLab serves them: the project id is the URL-encoded path (`group%2Fapp`), the
`PRIVATE-TOKEN` header must be the expected token (401 otherwise), and a hook's body needs a
`url`. Every request is recorded with its raw path, headers and JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Call:
    method: str
    raw_path: str
    token: str | None
    body: Any


class FakeGitLab:
    def __init__(self, project: str, token: str) -> None:
        self.project = project
        self.token = token
        self.hooks: dict[int, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._next_id = 1
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def project_url(self) -> str:
        return f"{self.url}/{self.project}"

    async def start(self) -> FakeGitLab:
        app = web.Application()
        app.router.add_route("*", "/api/v4/projects/{project}/hooks", self._hooks)
        app.router.add_route("*", "/api/v4/projects/{project}/hooks/{hook}", self._hook)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> web.Response | None:
        body = await request.json() if request.can_read_body else None
        token = request.headers.get("PRIVATE-TOKEN")
        self.calls.append(Call(request.method, request.raw_path, token, body))
        encoded = self.project.replace("/", "%2F")
        if f"/projects/{encoded}/" not in request.raw_path:
            return web.json_response({"message": "404 Project Not Found"}, status=404)
        if token != self.token:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        if request.method in ("POST", "PUT") and not (body or {}).get("url"):
            return web.json_response({"error": "url is missing"}, status=400)
        return None

    async def _hooks(self, request: web.Request) -> web.Response:
        if (refused := await self._record(request)) is not None:
            return refused
        if request.method == "GET":
            return web.json_response(list(self.hooks.values()))
        if request.method == "POST":
            hook = {**self.calls[-1].body, "id": self._next_id}
            self.hooks[self._next_id] = hook
            self._next_id += 1
            return web.json_response(hook, status=201)
        return web.json_response({"message": "405 Method Not Allowed"}, status=405)

    async def _hook(self, request: web.Request) -> web.Response:
        if (refused := await self._record(request)) is not None:
            return refused
        hook_id = int(request.match_info["hook"])
        if hook_id not in self.hooks:
            return web.json_response({"message": "404 Not found"}, status=404)
        if request.method == "PUT":
            self.hooks[hook_id] = {**self.calls[-1].body, "id": hook_id}
            return web.json_response(self.hooks[hook_id])
        if request.method == "DELETE":
            del self.hooks[hook_id]
            return web.Response(status=204)
        return web.json_response({"message": "405 Method Not Allowed"}, status=405)
