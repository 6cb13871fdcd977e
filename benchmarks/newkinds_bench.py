"""EventTransform and RequestReply figures (issue 15), for docs/benchmarks.md.

    python benchmarks/newkinds_bench.py [--transforms 20000] [--http 4000] [--concurrent 500]

Against the RabbitMQ at RABBITMESH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/), with
a real `rabbitmesh run` process (its own topology prefix) and config/examples' manifests:

1. JSONata engine: transforms/s of config/examples/eventtransform.yaml's expression over its
   event, compiled once, evaluated `--transforms` times in this process (jsonatapy alone);
2. EventTransform over HTTP: `--http` POSTs of that event to /eventtransforms/default/
   order-shape, 64 in flight: transforms/s end to end (parse, evaluate, answer);
3. RequestReply: config/examples/requestreply.yaml (the answering service is its
   EventTransform), `--concurrent` requests all in flight at once, then again: requests/s,
   p50/p99 latency, and how many were in flight together at the peak.

Its topology (prefix `rmbench-*`) stays in RabbitMQ; delete it with rabbitmqctl if it matters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "config" / "examples"
AMQP_URL = os.environ.get("RABBITMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ORDER = {
    "customer": {"name": "Ada"},
    "items": [{"sku": "a", "price": 2}, {"sku": "b", "price": 3.5}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def headers(type_: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": uuid.uuid4().hex,
        "ce-type": type_,
        "ce-source": "bench",
        "content-type": "application/json",
    }


def engine(n: int) -> float:
    import jsonatapy

    docs = list(yaml.safe_load_all((EXAMPLES / "eventtransform.yaml").read_text()))
    (et,) = [d for d in docs if d and d["kind"] == "EventTransform"]
    expr = jsonatapy.compile(et["spec"]["jsonata"]["expression"])
    event = {
        "specversion": "1.0",
        "id": "1",
        "type": "order.created",
        "source": "shop",
        "datacontenttype": "application/json",
        "data": ORDER,
    }
    start = time.perf_counter()
    for _ in range(n):
        expr.evaluate(event)
    return n / (time.perf_counter() - start)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit("rabbitmesh exited")
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("rabbitmesh not ready")


async def http_transforms(url: str, n: int, inflight: int = 64) -> float:
    body = json.dumps(ORDER).encode()
    sem = asyncio.Semaphore(inflight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as s:

        async def one() -> None:
            async with (
                sem,
                s.post(
                    url + "/eventtransforms/default/order-shape",
                    headers=headers("order.created"),
                    data=body,
                ) as r,
            ):
                await r.read()
                assert r.status == 200, r.status

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)


async def requests(url: str, n: int) -> dict[str, float]:
    body = json.dumps({"name": "Ada"}).encode()
    latencies: list[float] = []
    inflight = peak = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> None:
            nonlocal inflight, peak
            t0 = time.perf_counter()
            inflight += 1
            peak = max(peak, inflight)
            async with s.post(
                url + "/requestreplies/default/greeter",
                headers=headers("greeting.request"),
                data=body,
            ) as r:
                text = await r.read()
                assert r.status == 200, (r.status, text)
            inflight -= 1
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        took = time.perf_counter() - start
    latencies.sort()
    return {
        "requests_per_s": round(n / took, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "peak_in_flight": peak,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transforms", type=int, default=20000)
    ap.add_argument("--http", type=int, default=4000)
    ap.add_argument("--concurrent", type=int, default=500)
    a = ap.parse_args()
    results: dict[str, object] = {}
    results["engine_transforms_per_s"] = round(engine(a.transforms))
    print("JSONata engine (docs example):", results["engine_transforms_per_s"], "transforms/s")
    config = Path(tempfile.mkdtemp(prefix="rmbench-"))
    text = (EXAMPLES / "eventtransform.yaml").read_text().replace("127.0.0.1:9501", "127.0.0.1:9")
    manifests = text + "\n---\n" + (EXAMPLES / "requestreply.yaml").read_text()
    # 60 s rather than the example's 10: 500 at once on a busy 2-core machine may need it.
    (config / "all.yaml").write_text(manifests.replace("timeout: PT10S", "timeout: PT60S"))
    port = free_port()
    prefix = f"rmbench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "RABBITMESH_AMQP_URL": AMQP_URL,
        "RABBITMESH_HTTP_HOST": "127.0.0.1",
        "RABBITMESH_HTTP_PORT": str(port),
        "RABBITMESH_CONFIG_DIR": str(config),
        "RABBITMESH_TOPOLOGY_PREFIX": prefix,
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 (a start, not a wait)
        [sys.executable, "-m", "rabbitmesh", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        await http_transforms(url, 200)  # warm up
        results["http_transforms_per_s"] = round(await http_transforms(url, a.http))
        print("EventTransform over HTTP:", results["http_transforms_per_s"], "transforms/s")
        await requests(url, 50)  # warm up
        for i in (1, 2):
            r = await requests(url, a.concurrent)
            results[f"requestreply_round{i}"] = r
            print(f"RequestReply, {a.concurrent} at once (round {i}):", r)
    finally:
        proc.terminate()
        proc.wait(30)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
