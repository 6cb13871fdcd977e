"""`rabbitmesh run` on every core: a supervisor and its workers on one port (workers.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.support.api import BROKERS, TRIGGERS, broker, call, trigger
from tests.support.events import binary_headers
from tests.support.mesh import MeshProcess, free_port, unique_prefix, write_manifests
from tests.support.rabbit import rabbitmqctl
from tests.support.sink import Sink
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: br}
"""


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


async def worker_of_fresh_connection(url: str) -> int:
    """Which worker answers a new connection (the kernel picks one per connection)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(url + "/healthz") as r,
    ):
        return int((await r.json())["worker"])


ANSWERS: list[str] = []


async def post(url: str, type_: str) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.post(url, headers=binary_headers(type_, uuid.uuid4().hex), data=b"{}") as r,
    ):
        if r.status != 202:
            ANSWERS.append(f"{r.status} {await r.text()}")
        return r.status


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


@pytest.fixture
async def two_workers(tmp_path: Path, rabbitmq: str):
    write_manifests(tmp_path, BROKER)
    mesh = await MeshProcess(tmp_path, unique_prefix(), RABBITMESH_WORKERS="2").start(timeout=60)
    assert mesh.proc is not None
    await eventually(lambda: len(children(mesh.proc.pid)) == 2, what="two workers")
    # The second worker joins the port once it is ready.
    seen: set[int] = set()

    async def both() -> bool:
        seen.add(await worker_of_fresh_connection(mesh.url))
        return seen == {0, 1}

    await eventually(both, timeout=60, what="both workers answering on the one port")
    yield mesh
    await mesh.stop()


async def test_one_port_and_one_metrics_endpoint_summing_every_worker(two_workers):
    mesh = two_workers
    statuses = [await post(mesh.url + "/default/br", "com.example.w") for _ in range(40)]
    assert statuses == [202] * 40, ANSWERS
    # Whichever worker answers /metrics, the count is every worker's events.
    for _ in range(10):
        assert await metric(mesh.url, "event_count_total") == 40


async def test_sigterm_stops_every_worker_gracefully(two_workers):
    mesh = two_workers
    assert mesh.proc is not None
    kids = children(mesh.proc.pid)
    mesh.signal(signal.SIGTERM)
    assert await mesh.wait(60) == 0
    assert mesh.output().count("rabbitmesh: stopped") == 2, mesh.output()
    for pid in kids:
        assert not alive(pid), f"worker {pid} outlived the supervisor"


async def test_a_worker_that_dies_is_started_again(two_workers):
    mesh = two_workers
    assert mesh.proc is not None
    before = children(mesh.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    await eventually(
        lambda: len(set(children(mesh.proc.pid)) - set(before)) == 1,  # type: ignore[union-attr]
        timeout=30,
        what="a new worker process",
    )
    seen: set[int] = set()

    async def both() -> bool:
        seen.add(await worker_of_fresh_connection(mesh.url))
        return seen == {0, 1}

    await eventually(both, timeout=60, what="both workers answering again")
    assert mesh.proc.poll() is None


async def test_a_write_is_seen_by_every_worker_when_the_api_answers(two_workers):
    """Read-after-write across processes: an event posted right after the API created its
    broker is accepted whichever worker the connection lands on."""
    mesh = two_workers
    for n in range(3):
        name = f"fresh{n}"
        status, body = await call("POST", mesh.url + BROKERS.format(ns="default"), broker(name))
        assert status == 201, body
        statuses = [await post(f"{mesh.url}/default/{name}", "com.example.w") for _ in range(10)]
        assert statuses == [202] * 10, ANSWERS


async def test_concurrency_1_keeps_one_consumer_per_queue(tmp_path: Path, rabbitmq: str):
    """FIFO order needs a single consumer: with RABBITMESH_CONCURRENCY=1 only the first worker
    dispatches, the others take HTTP requests only."""
    sink = await Sink().start()
    prefix = unique_prefix()
    write_manifests(tmp_path, BROKER)
    mesh = await MeshProcess(
        tmp_path, prefix, RABBITMESH_WORKERS="2", RABBITMESH_CONCURRENCY="1"
    ).start(timeout=60)
    try:
        status, body = await call(
            "POST", mesh.url + TRIGGERS.format(ns="default"), trigger("t", "br", sink.url)
        )
        assert status == 201, body

        def consumers() -> dict[str, int]:
            out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "consumers")
            rows = (line.split() for line in out.splitlines())
            return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0].startswith(prefix)}

        queues = await eventually(
            lambda: {q: c for q, c in consumers().items() if "trigger" in q and c},
            timeout=30,
            what="the trigger queue consumed",
        )
        for _ in range(20):  # both workers serve HTTP; still one consumer
            assert await post(mesh.url + "/default/br", "com.example.w") == 202
        assert set(queues.values()) == {1}, consumers()
        await eventually(lambda: len(sink.received) == 20, what="20 deliveries")
        assert set(consumers()[q] for q in queues) == {1}
    finally:
        await mesh.stop()
        await sink.stop()


async def test_a_port_in_use_is_reported_once_and_not_shared(tmp_path: Path, rabbitmq: str):
    """SO_REUSEPORT must not let a second installation join a port in use."""
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        mesh = MeshProcess(tmp_path, unique_prefix(), port=port, RABBITMESH_WORKERS="2")
        mesh.proc = subprocess.Popen(  # noqa: ASYNC220 (a start; waited for below)
            mesh.command(), env=mesh.env, stdout=mesh.log, stderr=subprocess.STDOUT
        )
        assert await mesh.wait(30) == 1
        assert "cannot listen" in mesh.output().lower() or "in use" in mesh.output()
    finally:
        await mesh.stop()
        holder.close()


async def test_a_start_of_two_workers_reconciles_each_resource_once_per_worker(
    tmp_path: Path, rabbitmq: str
):
    """Issue 13: a cold start reconciles every resource once in each worker (each is a full
    replica), no more; and the config dir is written to the store once, by the first worker,
    not once per worker (the second copies were "unchanged" records every replica read)."""
    from tests.integration.test_control_plane_failures import store_records

    n = 30
    docs = [BROKER] + [
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
        f"metadata: {{name: t{i}}}\n"
        f"spec: {{broker: br, filter: {{attributes: {{type: ty{i}}}}}, "
        "subscriber: {uri: 'http://127.0.0.1:9/'}}\n"
        for i in range(n)
    ]
    write_manifests(tmp_path, "---\n".join(docs))
    prefix = unique_prefix()
    mesh = await MeshProcess(tmp_path, prefix, RABBITMESH_WORKERS="2").start(timeout=60)
    try:
        assert mesh.proc is not None
        seen: set[int] = set()

        async def both() -> bool:
            seen.add(await worker_of_fresh_connection(mesh.url))
            return seen == {0, 1}

        await eventually(both, timeout=60, what="both workers ready on the one port")

        async def reconciles(kind: str) -> float:
            async with aiohttp.ClientSession() as s, s.get(mesh.url + "/metrics") as r:
                text = await r.text()
            pattern = rf'^rabbitmesh_reconciles_total\{{[^}}]*kind="{kind}"[^}}]*\}} (\S+)$'
            return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))

        assert await reconciles("Trigger") == 2 * n
        assert await reconciles("Broker") == 2

        async def read_back() -> list[dict] | None:
            # A read of the stream can end early (it stops at the message count RabbitMQ
            # gave when it began, which may lag what was written): read it again until it
            # holds every document; more than that would be written twice (asserted below).
            applies = [r for r in await store_records(prefix) if r.get("op") == "apply"]
            return applies if len(applies) >= n + 1 else None

        applies = await eventually(read_back, timeout=30, interval=0.5, what="the applies")
        assert len(applies) == n + 1, [(r.get("writer"), r["key"], r.get("rid")) for r in applies]
        assert len({r["writer"] for r in applies}) == 1
    finally:
        await mesh.stop()
