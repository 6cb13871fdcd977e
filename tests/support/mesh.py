"""Running rabbitmesh in tests: in-process (fast) or as a real `rabbitmesh run` process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from rabbitmesh.server import Server
from rabbitmesh.settings import Settings

AMQP_URL = os.environ.get("RABBITMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TEST_PREFIX_ROOT = "rmtest"


#: Ports the suite hands out to the servers it starts: below the kernel's ephemeral range
#: (32768 and up on Linux), where every outgoing connection takes its local port, so a port
#: found free there can be taken by some test's client before the server binds it (seen: an
#: event-display "address already in use"); and a slice per xdist process, so two processes
#: never hand out the same one.
PORT_BASE, PORT_SLICE = 20000, 1500
#: Started somewhere in the slice by the pid: two runs side by side (a test file run by hand
#: next to the suite) do not walk the same ports in step.
_port_sequence = itertools.count(os.getpid() * 97 % PORT_SLICE)


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = PORT_BASE + (int(worker) % 8 if worker.isdigit() else 0) * PORT_SLICE
    for _ in range(PORT_SLICE):
        port = base + next(_port_sequence) % PORT_SLICE
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (another program, or a connection still closing)
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + PORT_SLICE - 1}")


#: Every prefix this test session handed out, so that cleanup removes only its own objects
#: (another session may be running tests on the same RabbitMQ).
CREATED_PREFIXES: list[str] = []


def unique_prefix() -> str:
    p = f"{TEST_PREFIX_ROOT}-{uuid.uuid4().hex[:10]}"
    CREATED_PREFIXES.append(p)
    return p


def write_manifests(directory: Path, text: str, name: str = "manifests.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


class InProcessMesh:
    """The real Server object on the test's event loop (no subprocess start-up cost)."""

    def __init__(self, config_dir: Path, prefix: str, **settings: Any) -> None:
        self.port = free_port()
        base = {
            "amqp_url": AMQP_URL,
            "http_host": "127.0.0.1",
            "http_port": self.port,
            "config_dir": config_dir,
            "topology_prefix": prefix,
            "shutdown_timeout": 5.0,
        }
        base.update(settings)
        self.settings = Settings(**base)
        self.server = Server(self.settings)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ready: bool = True, timeout: float = 20.0) -> InProcessMesh:
        self._task = asyncio.create_task(self.server.run_forever())
        if ready:
            await wait_ready(self.url, timeout, self._task)
        return self

    async def stop(self) -> None:
        """Stop as SIGTERM does; a shutdown that does not finish in STOP_TIMEOUT fails with
        every task's chain of awaits (where it waits), instead of hanging until pytest's
        timeout (once, under a CPU burner, a teardown hung 120 s with nothing to show where)."""
        if self._task is None:
            return
        self.server._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT)
        except TimeoutError:
            stacks = task_stacks()
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 5)
            self._task = None
            raise AssertionError(
                f"rabbitmesh did not stop within {STOP_TIMEOUT:g}s; its tasks:\n{stacks}"
            ) from None
        self._task = None


#: How long an in-process rabbitmesh may take to stop (its shutdown_timeout is 5 s here).
STOP_TIMEOUT = 30.0


def task_stacks() -> str:
    """Every asyncio task of the running loop with the chain of awaits it is suspended in
    (Task.print_stack shows only the outermost coroutine's frame)."""
    lines = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        lines.append(f"--- {task.get_name()}")
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                code = frame.f_code
                lines.append(f"    {code.co_filename}:{frame.f_lineno} {code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "\n".join(lines)


async def wait_ready(url: str, timeout: float, task: Any = None, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            if task is not None and task.done():
                task.result()
                raise AssertionError("rabbitmesh stopped before it was ready")
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"rabbitmesh exited with {proc.returncode} before ready")
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not ready within {timeout}s")
            await asyncio.sleep(0.05)


class MeshProcess:
    """`rabbitmesh run` as a user starts it, with its log in a file for failing tests."""

    def __init__(self, config_dir: Path, prefix: str, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "RABBITMESH_AMQP_URL": AMQP_URL,
            "RABBITMESH_HTTP_HOST": "127.0.0.1",
            "RABBITMESH_HTTP_PORT": str(self.port),
            "RABBITMESH_CONFIG_DIR": str(config_dir),
            "RABBITMESH_TOPOLOGY_PREFIX": prefix,
            "RABBITMESH_SHUTDOWN_TIMEOUT": "10",
            **env,
        }
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="rabbitmesh-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "rabbitmesh", "run"]

    async def start(self, timeout: float = 30.0) -> MeshProcess:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a start, not a wait)
            self.command(), env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            await wait_ready(self.url, timeout, proc=self.proc)
        except AssertionError as e:
            await self.stop()
            # The reason is in rabbitmesh's log, which pytest does not show: its end goes
            # into the failure.
            tail = "\n".join(self.output().splitlines()[-25:])
            raise AssertionError(f"{e}\n--- end of {self.log.name} ---\n{tail}") from e
        except BaseException:
            # Callers stop only what started: one that never got ready must not outlive its
            # test (one did, for 37 minutes, after a start-up timeout on a loaded machine).
            await self.stop()
            raise
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("rabbitmesh did not exit in time")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                await self.wait(30)
            except AssertionError:
                self.proc.kill()
                await self.wait(5)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")
