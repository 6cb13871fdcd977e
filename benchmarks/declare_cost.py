"""What RabbitMQ spends on the topology of N Triggers, over 1 or more channels: the figures
behind the topology's lanes (rabbitmesh/amqp/topology.py, docs/benchmarks.md "Topology lanes").

    python benchmarks/declare_cost.py [--queues 5000] [--channels 8] [--in-flight 64]

Against the RabbitMQ at $RABBITMESH_AMQP_URL (benchlib.amqp_url), with no rabbitmesh: creates
`--queues` durable queues with a Trigger queue's arguments, declares them again, binds each to
a topic exchange, binds again, consumes each from two connections (as two worker processes
do), then deletes everything. For each step: wall clock, RabbitMQ's CPU seconds (its process,
from /proc: run it on the machine RabbitMQ runs on) and this client's. Up to `--in-flight`
requests at once, spread over `--channels` channels.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def main(args: argparse.Namespace) -> None:
    url = benchlib.amqp_url()
    rabbit = benchlib.rabbitmq_pid()
    prefix = f"{benchlib.PREFIX_ROOT}declare-{uuid.uuid4().hex[:8]}"
    exchange = f"{prefix}.broker"
    names = [f"{prefix}.q{i}" for i in range(args.queues)]
    conns = [await aio_pika.connect(url) for _ in range(2)]
    try:
        channels = [await conns[0].channel() for _ in range(args.channels)]
        await channels[0].declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)

        async def each(
            op: Callable[[aio_pika.abc.AbstractChannel, str], Awaitable[object]],
        ) -> None:
            gate = asyncio.Semaphore(args.in_flight)

            async def one(i: int, name: str) -> None:
                async with gate:
                    await op(channels[i % len(channels)], name)

            await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))

        async def declare(ch: aio_pika.abc.AbstractChannel, name: str) -> object:
            dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name + ":dlq"}
            return await ch.declare_queue(name, durable=True, arguments=dlx)

        async def bind(ch: aio_pika.abc.AbstractChannel, name: str) -> object:
            q = await ch.get_queue(name, ensure=False)
            return await q.bind(exchange, name)

        async def consume(ch: aio_pika.abc.AbstractChannel, name: str) -> object:
            q = await ch.get_queue(name, ensure=False)
            return await q.consume(lambda m: None)

        async def step(label: str, run: Callable[[], Awaitable[None]]) -> None:
            c0, m0, t0 = (
                benchlib.cpu_seconds_one(rabbit) if rabbit else 0.0,
                own_cpu_s(),
                time.perf_counter(),
            )
            await run()
            wall = time.perf_counter() - t0
            rabbit_s = benchlib.cpu_seconds_one(rabbit) - c0 if rabbit else float("nan")
            print(
                f"{label:<10} wall {wall:5.1f} s  RabbitMQ {rabbit_s:5.1f} s  client "
                f"{own_cpu_s() - m0:4.1f} s of CPU",
                flush=True,
            )

        print(f"{args.queues} queues, {args.channels} channel(s), {args.in_flight} in flight")
        await step("create", lambda: each(declare))
        await step("redeclare", lambda: each(declare))
        await step("bind", lambda: each(bind))
        await step("rebind", lambda: each(bind))
        await step("consume", lambda: each(consume))
        channels[:] = [await conns[1].channel() for _ in range(args.channels)]
        await step("consume 2", lambda: each(consume))
    finally:
        for c in conns:
            await c.close()
        await benchlib.delete_all(url, names, [exchange])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=5000)
    parser.add_argument("--channels", type=int, default=8, help="channels the requests spread over")
    parser.add_argument("--in-flight", type=int, default=64, help="requests outstanding at once")
    asyncio.run(main(parser.parse_args()))
