"""A real HTTP subscriber for tests: records every request and answers as told."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # time.monotonic()

    @property
    def ce_id(self) -> str | None:
        return self.headers.get("ce-id")


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


Responder = Callable[[Received, int], Reply]
"""(request, 0-based index of this request) -> what to answer."""


class Sink:
    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda _r, _i: Reply(202))
        self.received: list[Received] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, port: int = 0) -> Sink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = Received(
            request.path, CIMultiDict(request.headers), await request.read(), time.monotonic()
        )
        index = len(self.received)
        self.received.append(rec)
        async with self._changed:
            self._changed.notify_all()
        reply = self.responder(rec, index)
        if reply.delay:
            await asyncio.sleep(reply.delay)  # the subscriber being slow, not test synchronisation
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` requests arrived; fail the test after `timeout`."""

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.received) >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"sink {self.url} got {len(self.received)} requests, expected {count} "
                f"within {timeout}s"
            ) from None
        return self.received

    def ids(self) -> list[str]:
        return [r.ce_id for r in self.received if r.ce_id is not None]
