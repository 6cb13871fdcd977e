"""Two `rabbitmesh run` processes on one RabbitMQ: one install, two replicas."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import aiohttp
import pytest

from tests.support.api import BROKERS, TRIGGERS, broker, call, ready, trigger
from tests.support.events import binary_headers
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.rabbit import rabbitmqctl
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


#: Why events were refused, for failure messages.
REFUSALS: list[str] = []


async def post_many(urls: list[str], ids: list[str], type_: str) -> dict[str, int]:
    """POST one event per id, round-robin over `urls`; id -> status (0: no answer)."""
    statuses: dict[str, int] = {}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as s:

        async def one(n: int, i: str) -> None:
            async with sem:
                try:
                    async with s.post(
                        urls[n % len(urls)], headers=binary_headers(type_, i), data=b"{}"
                    ) as r:
                        statuses[i] = r.status
                        if r.status != 202:
                            REFUSALS.append(f"{r.status} {await r.text()}")
                except (aiohttp.ClientError, OSError):
                    statuses[i] = 0

        await asyncio.gather(*(one(n, i) for n, i in enumerate(ids)))
    return statuses


def idle(queues: list[str]) -> bool:
    """No message ready or unacked in these queues: every delivery has finished."""
    out = rabbitmqctl(
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    )
    counts = {line.split("\t")[0]: line.split("\t")[1:] for line in out.splitlines()}
    return all(counts.get(q) == ["0", "0"] for q in queues)


@pytest.fixture
async def replicas(tmp_path, prefix):
    write_manifests(tmp_path / "config", "")
    a = MeshProcess(tmp_path / "config", prefix)
    b = MeshProcess(tmp_path / "config", prefix)
    await asyncio.gather(a.start(), b.start())
    yield a, b
    await asyncio.gather(a.stop(), b.stop())


async def test_two_replicas_share_resources_and_deliver_each_event_once(
    replicas, make_sink, prefix
):
    a, b = replicas
    typed, every = await make_sink(), await make_sink()
    assert (await call("POST", a.url + BROKERS.format(ns="default"), broker("br")))[0] == 201
    for t in (
        trigger("typed", "br", typed.url, filter={"attributes": {"type": "com.example.x"}}),
        trigger("every", "br", every.url),
    ):
        assert (await call("POST", a.url + TRIGGERS.format(ns="default"), t))[0] == 201

    async def ready_on_b() -> bool:
        status, body = await call("GET", b.url + TRIGGERS.format(ns="default") + "/typed")
        return status == 200 and ready(body)[0] == "True"

    await eventually(ready_on_b, timeout=5, what="trigger created on A Ready on B")
    statuses = await post_many([b.url + "/default/br"], ["via-b"], "com.example.x")
    assert statuses == {"via-b": 202}
    await typed.wait_for(1)

    xs = [f"x{i}" for i in range(200)]
    ys = [f"y{i}" for i in range(100)]
    urls = [a.url + "/default/br", b.url + "/default/br"]
    statuses = {
        **(await post_many(urls, xs, "com.example.x")),
        **(await post_many(urls, ys, "com.example.y")),
    }
    assert set(statuses.values()) == {202}, REFUSALS[:3]
    await eventually(
        lambda: set(xs) <= set(typed.ids()) and set(xs + ys) <= set(every.ids()),
        timeout=20,
        what="every event at every matching trigger",
    )
    queues = [f"{prefix}.trigger.default.typed", f"{prefix}.trigger.default.every"]
    await eventually(lambda: idle(queues), timeout=10, what="queues drained")
    assert Counter(typed.ids()) == Counter(["via-b", *xs])  # exactly once, nothing else
    assert Counter(every.ids()) == Counter(["via-b", *xs, *ys])


async def test_stopping_one_replica_under_load_loses_nothing(replicas, make_sink):
    a, b = replicas
    sink = await make_sink()
    await call("POST", a.url + BROKERS.format(ns="default"), broker("br"))
    await call("POST", a.url + TRIGGERS.format(ns="default"), trigger("tr", "br", sink.url))

    async def routable_on_b() -> bool:
        status, body = await call("GET", b.url + TRIGGERS.format(ns="default") + "/tr")
        return status == 200 and ready(body)[0] == "True"

    await eventually(routable_on_b, timeout=5, what="trigger Ready on B")
    urls = [a.url + "/default/br", b.url + "/default/br"]
    results: dict[str, int] = {}
    stop = asyncio.Event()

    async def load() -> None:
        batch = 0
        while not stop.is_set() and batch < 400:
            ids = [f"b{batch}-{i}" for i in range(20)]
            results.update(await post_many(urls, ids, "com.example.load"))
            batch += 1

    def accepted() -> set[str]:
        return {i for i, s in results.items() if s == 202}

    loader = asyncio.create_task(load())
    await eventually(lambda: len(accepted()) >= 200, timeout=20, what="load running")
    a.signal(signal.SIGTERM)
    assert await a.wait(30) == 0
    before = len(accepted())
    await eventually(lambda: len(accepted()) >= before + 200, timeout=20, what="B still taking")
    stop.set()
    await loader
    ok = accepted()
    assert set(results.values()) <= {202, 503, 0}  # refused while A stopped, never lost
    await eventually(
        lambda: ok <= set(sink.ids()), timeout=30, what=f"all {len(ok)} accepted events delivered"
    )
