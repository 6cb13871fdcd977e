"""What the benchmark scripts share: which RabbitMQ, ports, starting rabbitmesh and the thin
reference pipeline, counting sinks, cleaning up. Not a benchmark itself.

RabbitMQ: `--amqp-url`, else $RABBITMESH_TEST_AMQP_URL, else $RABBITMESH_AMQP_URL, else the
local default; `rabbitmqctl` is pointed at $RABBITMESH_TEST_RABBITMQ_NODE when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
PREFIX_ROOT = "rmbench-"


def amqp_url(given: str | None = None) -> str:
    return (
        given
        or os.environ.get("RABBITMESH_TEST_AMQP_URL")
        or os.environ.get("RABBITMESH_AMQP_URL")
        or DEFAULT_AMQP
    )


class Ports:
    """Free ports: from `base` upwards when given (a shared machine's assigned range), else
    whatever the kernel hands out."""

    def __init__(self, base: int | None = None) -> None:
        self.next = base

    def __call__(self) -> int:
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                port = 0
                if self.next is not None:
                    port, self.next = self.next, self.next + 1
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up in {timeout}s")


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not open in {timeout}s")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def new_prefix() -> str:
    return f"{PREFIX_ROOT}{uuid.uuid4().hex[:8]}"


def broker_manifests(sink_url: str, triggers: list[tuple[str, str | None]]) -> str:
    """One broker `bench` and triggers (name, type filter or None for every event)."""
    docs = [
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: bench}\n",
    ]
    for name, type_ in triggers:
        filt = f"  filter: {{attributes: {{type: {type_}}}}}\n" if type_ else ""
        docs.append(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
            f"metadata: {{name: {name}}}\nspec:\n  broker: bench\n{filt}"
            f'  subscriber: {{uri: "{sink_url}/{name}"}}\n'
        )
    return "---\n".join(docs)


def start_rabbitmesh(
    port: int,
    manifests: str,
    amqp: str,
    workers: int | None = None,
    extra_env: dict[str, str] | None = None,
    prefix: str | None = None,
    ready_timeout: float = 90,
) -> subprocess.Popen:
    """`rabbitmesh run` with these manifests in a fresh config dir and topology prefix.

    Stopped again when it does not get ready in `ready_timeout` seconds: left running, it
    would outlive the benchmark and fight the cleanup that deletes its queues."""
    config = Path(tempfile.mkdtemp(prefix="rmbench-config-"))
    (config / "bench.yaml").write_text(manifests)
    env = {
        **os.environ,
        "RABBITMESH_AMQP_URL": amqp,
        "RABBITMESH_HTTP_PORT": str(port),
        "RABBITMESH_HTTP_HOST": "127.0.0.1",
        "RABBITMESH_CONFIG_DIR": str(config),
        "RABBITMESH_LOG_LEVEL": "warning",
        "RABBITMESH_TOPOLOGY_PREFIX": prefix or new_prefix(),
        **(extra_env or {}),
    }
    env.pop("RABBITMESH_WORKERS", None)
    if workers is not None:
        env["RABBITMESH_WORKERS"] = str(workers)
    p = subprocess.Popen(
        [sys.executable, "-m", "rabbitmesh", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", ready_timeout, proc=p)
    except BaseException:
        stop(p)
        raise
    return p


#: Runs ../shared/bench/thin_pipeline.py against another RabbitMQ than its built-in
#: amqp://127.0.0.1/ (the file itself is the shared reference and stays as it is).
_THIN_SHIM = """
import os, runpy, sys
import aio_pika
_connect = aio_pika.connect
async def connect(url=None, *a, **k):
    return await _connect(os.environ["THIN_AMQP_URL"], *a, **k)
aio_pika.connect = connect
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start_thin(bench: Path, port: int, sink_url: str, amqp: str, uvloop: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _THIN_SHIM, str(bench / "thin_pipeline.py"), str(port), sink_url]
    if uvloop:
        cmd.append("uvloop")
    p = subprocess.Popen(cmd, env={**os.environ, "THIN_AMQP_URL": amqp}, stdout=subprocess.DEVNULL)
    wait_port(port)
    return p


def rabbitmqctl(*args: str) -> str:
    node = os.environ.get("RABBITMESH_TEST_RABBITMQ_NODE")
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def rabbitmq_pid() -> int | None:
    """The OS pid of the RabbitMQ node the benchmarks use (its Erlang VM), if it answers:
    its CPU is part of what an event costs the machine."""
    out = rabbitmqctl("eval", "list_to_integer(os:getpid()).").strip()
    return int(out) if out.isdigit() else None


def cleanup(amqp: str, prefixes: tuple[str, ...] = (PREFIX_ROOT, "thin.")) -> None:
    """Delete the queues and exchanges benchmark runs declared (and thin's own)."""

    def names(what: str) -> list[str]:
        out = rabbitmqctl(f"list_{what}", "-q", "--no-table-headers", "name")
        return [n.strip() for n in out.splitlines() if n.strip().startswith(prefixes)]

    asyncio.run(delete_all(amqp, names("queues"), names("exchanges")))


async def delete_all(amqp: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete these queues and exchanges on one channel, opening a new one only after an
    error closed it (a channel per delete, never closed, hit RabbitMQ's channel_max of 2,047
    after a 5,000-Trigger run and broke the connection)."""
    import aio_pika

    conn = await aio_pika.connect(amqp)
    async with conn:
        ch = await conn.channel()
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                if ch.is_closed:
                    ch = await conn.channel()
                with contextlib.suppress(Exception):
                    if kind == "queue":
                        await ch.queue_delete(name)
                    else:
                        await ch.exchange_delete(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its children still running (/proc)."""
    return sum(cpu_seconds_one(p) for p in process_tree(pid))


def cpu_seconds_one(pid: int) -> float:
    """User + system CPU of one process (0 once it is gone)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo.extend(int(k) for k in kids)
    return out


def rss_kib_one(pid: int) -> int:
    """Resident set size of one process, in KiB (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size of a process and its children (the workers), in KiB."""
    return sum(rss_kib_one(p) for p in process_tree(pid))


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (pastes into docs/benchmarks.md as it is)."""
    cells = [[str(c) for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


@contextlib.contextmanager
def running(p: subprocess.Popen) -> Iterator[subprocess.Popen]:
    try:
        yield p
    finally:
        stop(p)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# --- in-process load and sinks (the scenario benchmarks) -------------------------------------

BODY = b'{"message": "hello", "pad": "' + b"x" * 200 + b'"}'


def ce_headers(type_: str, i: int) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": f"{i}-{uuid.uuid4().hex[:8]}",
        "ce-type": type_,
        "ce-source": "bench",
        "content-type": "application/json",
    }


class QueueCount:
    """Counts what reached a durable queue the benchmark binds itself to a broker's exchange
    (nothing consumes it): "accepted" measured at the producer, "safely in RabbitMQ" checked
    here, with no delivery cost competing for the cores. Same interface as CountingSink."""

    def __init__(self, amqp: str, exchange: str, queue: str) -> None:
        self.amqp, self.exchange, self.queue = amqp, exchange, queue
        self.count = 0
        self.last = 0.0

    async def start(self) -> QueueCount:
        import aio_pika

        self.conn = await aio_pika.connect(self.amqp)
        ch = await self.conn.channel()
        q = await ch.declare_queue(self.queue, durable=True)
        await q.bind(self.exchange, routing_key="#")
        self.ch = ch
        return self

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            q = await self.ch.declare_queue(self.queue, passive=True)
            depth = q.declaration_result.message_count or 0
            if depth != self.count:
                self.count, self.last = depth, time.perf_counter()
            if self.count >= count or time.monotonic() > deadline:
                return self.count >= count
            await asyncio.sleep(0.2)  # polling a counter RabbitMQ keeps, until the deadline

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.ch.queue_delete(self.queue)
        await self.conn.close()


class CountingSink:
    """An HTTP subscriber that answers 202 and counts what it receives, per path."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.last = 0.0
        self.by_path: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def start(self) -> CountingSink:
        from aiohttp import web

        async def recv(req: web.Request) -> web.Response:
            await req.read()
            self.count += 1
            self.by_path[req.path] = self.by_path.get(req.path, 0) + 1
            self.last = time.perf_counter()
            self.changed.set()
            return web.Response(status=202)

        app = web.Application()
        app.router.add_post("/{tail:.*}", recv)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True

    async def stop(self) -> None:
        await self.runner.cleanup()


async def post_saturated(
    url: str,
    n_requests: int,
    concurrency: int,
    request: Any,
) -> tuple[dict[int, int], float]:
    """POST `n_requests` with `concurrency` in flight; `request(i)` gives (headers, body).
    Returns status -> count and the seconds it took."""
    import aiohttp

    codes: dict[int, int] = {}
    todo = iter(range(n_requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def lane() -> None:
            for i in todo:
                headers, body = request(i)
                try:
                    async with session.post(url, headers=headers, data=body) as r:
                        await r.read()
                        codes[r.status] = codes.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    codes[0] = codes.get(0, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return codes, time.perf_counter() - t0
