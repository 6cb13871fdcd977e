"""Ordered against unordered delivery, and the replay rate (issue 14).

    python benchmarks/ordering_bench.py [--n 3000] [--rounds 2] [--keys 64]

Against the RabbitMQ at RABBITMESH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/): one
real `rabbitmesh run` process with a Broker (archive on) and two Triggers to the same real
HTTP sink: `plain` (unordered) and `ordered` (rabbitmesh.dev/delivery-order: ordered, 8
partitions). Each round sends `--n` events to each trigger in turn (64 in flight; the ordered
ones spread over `--keys` partition keys) and times first send to last delivery. Then a
Replay of everything sent (with RABBITMESH_REPLAY_RATE set very high, to measure the
runner's own ceiling) into a third trigger: replayed events per second.

Prints one JSON line per measurement and the medians. Everything shares the machine's cores
(the sink, the load generator, rabbitmesh and RabbitMQ): compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

AMQP_URL = os.environ.get("RABBITMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        key = request.path.strip("/")
        self.counts[key] = self.counts.get(key, 0) + 1
        self.changed.set()
        return web.Response(status=200)

    async def wait(self, key: str, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.counts.get(key, 0) < n:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"{key}: {self.counts.get(key, 0)} of {n} delivered")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


def manifests(sink: str) -> str:
    def trig(name: str, type_: str, notes: str) -> str:
        return f"""---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: {name}, annotations: {{{notes}}}}}
spec:
  broker: b
  filter: {{attributes: {{type: {type_}}}}}
  subscriber: {{uri: "{sink}{name}"}}
"""

    ordered = '"rabbitmesh.dev/delivery-order": ordered, "rabbitmesh.dev/partitions": "8"'
    return (
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b, annotations: "
        '{"rabbitmesh.dev/archive-retention": "P1D"}}\n'
        + trig("plain", "bench.plain", "")
        + trig("ordered", "bench.ordered", ordered)
        + trig("replayed", "bench.none", "")
    )


async def send(url: str, type_: str, n: int, keys: int, tag: str) -> None:
    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            headers = {
                "ce-specversion": "1.0",
                "ce-id": f"{tag}-{i}",
                "ce-type": type_,
                "ce-source": "bench",
                "ce-partitionkey": f"k{i % keys}",
                "content-type": "application/json",
            }
            async with sem:
                for _ in range(50):
                    async with s.post(url, headers=headers, data=b'{"n":1}') as r:
                        if r.status == 202:
                            return
                    await asyncio.sleep(0.1)  # refused under load: send again
                raise SystemExit(f"event {i} never accepted")

        await asyncio.gather(*(one(i) for i in range(n)))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keys", type=int, default=64)
    args = ap.parse_args()

    sink = Sink()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sink_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()

    prefix = f"bench-order-{uuid.uuid4().hex[:6]}"
    port = free_port()
    config = Path(tempfile.mkdtemp())
    (config / "m.yaml").write_text(manifests(f"http://127.0.0.1:{sink_port}/"))
    env = {
        **os.environ,
        "RABBITMESH_AMQP_URL": AMQP_URL,
        "RABBITMESH_HTTP_PORT": str(port),
        "RABBITMESH_HTTP_HOST": "127.0.0.1",
        "RABBITMESH_CONFIG_DIR": str(config),
        "RABBITMESH_TOPOLOGY_PREFIX": prefix,
        "RABBITMESH_REPLAY_RATE": "1000000",
        "RABBITMESH_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "rabbitmesh", "run"], env=env)  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[float]] = {"plain": [], "ordered": []}
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                try:
                    async with s.get(base + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        start = datetime.now(UTC) - timedelta(seconds=1)
        total = 0
        for rnd in range(args.rounds):
            order = ["plain", "ordered"] if rnd % 2 == 0 else ["ordered", "plain"]
            for name in order:
                t0 = time.monotonic()
                before = sink.counts.get(name, 0)
                await send(base + "/default/b", f"bench.{name}", args.n, args.keys, f"{name}{rnd}")
                await sink.wait(name, before + args.n)
                rate = args.n / (time.monotonic() - t0)
                results[name].append(rate)
                total += args.n
                print(json.dumps({"round": rnd, "trigger": name, "delivered_per_s": round(rate)}))
        # Replay everything sent into `replayed` (filter: bench.none; the Replay's CESQL
        # filter is TRUE, the trigger's filter lets nothing through) -> measures the
        # runner's read/commit rate, not HTTP delivery.
        replay = {
            "apiVersion": "rabbitmesh.dev/v1alpha1",
            "kind": "Replay",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "broker": "b",
                "from": start.isoformat().replace("+00:00", "Z"),
                "destination": {"uri": f"http://127.0.0.1:{sink_port}/replay"},
            },
        }
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            url = base + "/apis/rabbitmesh.dev/v1alpha1/namespaces/default/replays"
            async with s.post(url, json=replay) as r:
                assert r.status == 201, await r.text()
        await sink.wait("replay", total)
        replay_rate = total / (time.monotonic() - t0)
        print(json.dumps({"replay_delivered_per_s": round(replay_rate), "events": total}))
        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            json.dumps(
                {
                    "median_plain_per_s": round(med["plain"]),
                    "median_ordered_per_s": round(med["ordered"]),
                    "ordered_vs_plain": round(med["ordered"] / med["plain"], 2),
                    "replay_to_sink_per_s": round(replay_rate),
                }
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await runner.cleanup()
        await cleanup(prefix)


async def cleanup(prefix: str) -> None:
    """Delete this run's queues and exchanges (names from rabbitmqctl, deletes over AMQP)."""
    import aio_pika

    node = os.environ.get("RABBITMESH_TEST_RABBITMQ_NODE")
    ctl = ["rabbitmqctl", *(["-n", node] if node else [])]
    conn = await aio_pika.connect(AMQP_URL)
    try:
        for what in ("queues", "exchanges"):
            out = subprocess.run(  # noqa: ASYNC221
                [*ctl, f"list_{what}", "-q", "--no-table-headers", "name"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for name in (n.strip() for n in out.splitlines()):
                if name.startswith(prefix):
                    ch = await conn.channel()
                    if what == "queues":
                        await ch.queue_delete(name)
                    else:
                        await ch.exchange_delete(name)
                    await ch.close()
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
