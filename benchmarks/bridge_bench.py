"""Throughput of the RabbitMQ bridges, in one process against a real RabbitMQ.

    RABBITMESH_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ \\
        python benchmarks/bridge_bench.py [--messages 5000] [--parallelism 100] [--port 18390]

1. RabbitmqSource: MESSAGES plain messages are published to a queue first, then a source
   with the given parallelism delivers them to a local HTTP sink answering 202; prints
   messages/s from the first to the last delivery (acks included: the queue is empty at the
   end).
2. RabbitmqSink: MESSAGES events POSTed to a sink's ingress, 64 requests in flight, each
   answered 202 after RabbitMQ's confirm; prints events/s, and the same for a Broker's
   ingress on the same machine for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rabbitmesh.server import Server  # noqa: E402
from rabbitmesh.settings import Settings  # noqa: E402

AMQP = os.environ.get("RABBITMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def main(messages: int, parallelism: int, port: int) -> None:
    run = uuid.uuid4().hex[:8]
    queue, exchange, out_q = f"bench-{run}.in", f"bench-{run}.out", f"bench-{run}.out-q"
    got = 0
    first = last = 0.0
    done = asyncio.Event()

    async def sink(_r: web.Request) -> web.Response:
        nonlocal got, first, last
        got += 1
        last = time.monotonic()
        first = first or last
        if got >= messages:
            done.set()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", sink)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port + 1).start()

    conn = await aio_pika.connect(AMQP)
    ch = await conn.channel(publisher_confirms=True)
    await ch.declare_queue(queue, durable=True)
    x = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    q_out = await ch.declare_queue(out_q, durable=True)
    await q_out.bind(x, "#")
    await asyncio.gather(
        *(
            ch.default_exchange.publish(aio_pika.Message(b'{"n": 1}', message_id=str(i)), queue)
            for i in range(messages)
        )
    )
    config = Path(tempfile.mkdtemp())
    (config / "bench.yaml").write_text(
        f"""
apiVersion: sources.knative.dev/v1alpha1
kind: RabbitmqSource
metadata: {{name: bench}}
spec:
  rabbitmqResourcesConfig: {{queueName: {queue}, predeclared: true, parallelism: {parallelism}}}
  sink: {{uri: "http://127.0.0.1:{port + 1}/"}}
---
apiVersion: sinks.rabbitmesh.dev/v1alpha1
kind: RabbitmqSink
metadata: {{name: bench}}
spec: {{exchangeName: {exchange}}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: bench}}
"""
    )
    server = Server(
        Settings(
            amqp_url=AMQP,
            http_host="127.0.0.1",
            http_port=port,
            config_dir=config,
            topology_prefix=f"bench-{run}-mesh",
        )
    )
    task = asyncio.create_task(server.run_forever())
    try:
        await asyncio.wait_for(done.wait(), 600)
        print(
            f"RabbitmqSource: {messages} messages, parallelism {parallelism}: "
            f"{messages / (last - first):,.0f} messages/s"
        )
        sem = asyncio.Semaphore(64)
        async with aiohttp.ClientSession() as s:

            async def post(url: str, i: int) -> None:
                headers = {
                    "ce-specversion": "1.0",
                    "ce-id": str(i),
                    "ce-type": "t",
                    "ce-source": "/b",
                }
                async with sem, s.post(url, headers=headers, data=b"{}") as r:
                    if r.status != 202:
                        raise SystemExit(f"{url} answered {r.status}: {await r.text()}")

            # The same load on a Broker's ingress, for comparison on the same machine.
            for what, path in (
                ("RabbitmqSink", "rabbitmqsinks/default/bench"),
                ("Broker", "default/bench"),
            ):
                url = f"http://127.0.0.1:{port}/{path}"
                start = time.monotonic()
                await asyncio.gather(*(post(url, i) for i in range(messages)))
                took = time.monotonic() - start
                rate = messages / took
                print(f"{what} ingress: {messages} events, 64 in flight: {rate:,.0f} events/s")
    finally:
        server._stop.set()
        await task
        await ch.queue_delete(queue)
        await ch.queue_delete(out_q)
        await ch.exchange_delete(exchange)
        await conn.close()
        await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--parallelism", type=int, default=100)
    p.add_argument("--port", type=int, default=18390)
    a = p.parse_args()
    asyncio.run(main(a.messages, a.parallelism, a.port))
