"""The helper services (`rabbitmesh event-display|appender|filter|heartbeats`) as the real
processes a user starts, with their stdout collected for assertions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import aiohttp

from tests.support.mesh import free_port
from tests.support.waiting import eventually

EVENT_HEADER = "☁️  cloudevents.Event"


class ToolProcess:
    def __init__(self, *args: str, listen: bool = True, env: dict[str, str] | None = None):
        self.port = free_port() if listen else 0
        self.args = [*args, "--host", "127.0.0.1", "--port", str(self.port)] if listen else [*args]
        self.env = env
        self.output = ""
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="rabbitmesh-tool-", suffix=".log", delete=False
        )
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, timeout: float = 20.0) -> ToolProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rabbitmesh",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, **(self.env or {})},
        )
        self._reader = asyncio.create_task(self._read())
        if self.port:
            await eventually(self._healthy, timeout=timeout, what=f"{self.args[0]} up")
        return self

    async def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"{self.args} exited {self.proc.returncode}: {self.stderr()}")
        try:
            async with aiohttp.ClientSession() as s, s.get(self.url + "healthz") as r:
                return r.status == 204
        except aiohttp.ClientError:
            return False

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.output += line.decode("utf-8", "replace")

    def events(self) -> list[str]:
        """What event-display printed, one string per event."""
        return [EVENT_HEADER + part for part in self.output.split(EVENT_HEADER)[1:]]

    async def wait_for_events(self, count: int, timeout: float = 15.0) -> list[str]:
        await eventually(
            lambda: len(self.events()) >= count,
            timeout=timeout,
            what=f"{count} events printed by {self.args[0]} (got: {self.output!r})",
        )
        return self.events()

    def stderr(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5)
