"""Opening and closing many channels on one connection (issue 13: the serial stop).

    python benchmarks/channel_close_bench.py [--channels 3000] [--order oldest|newest]

Opens `--channels` channels (rabbitmesh's TidyRobustChannel, as a queue worker gets them) on
one AmqpClient connection to RABBITMESH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
then closes them all, oldest first as a stop does (or newest first). Prints the CPU seconds
of this process (time.process_time) and the wall time of each phase, and the callbacks left
on the connection's `closing` future. RabbitMQ's channel_max (2047 by default) caps the
channels of one connection: the script spreads them over as many connections as needed,
`--per-connection` each (default 1,500, under that cap).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from rabbitmesh.amqp.client import AmqpClient

URL = os.environ.get("RABBITMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _pending(client: AmqpClient) -> int:
    assert client.connection is not None
    closing: Any = client.connection.transport.connection._closing  # type: ignore[attr-defined]
    return len(closing._callbacks or ())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=3000)
    parser.add_argument("--per-connection", type=int, default=1500)
    parser.add_argument("--order", choices=["oldest", "newest"], default="oldest")
    args = parser.parse_args()
    clients = []
    for k in range(-(-args.channels // args.per_connection)):
        client = AmqpClient(URL, f"channel-bench-{k}")
        await client.connect()
        clients.append(client)
    channels: list[list[Any]] = [[] for _ in clients]
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(args.channels):
        k = n // args.per_connection
        channels[k].append(await clients[k].channel(prefetch=10))
    opened_cpu, opened_wall = time.process_time() - cpu, time.perf_counter() - wall
    pending_open = [_pending(c) for c in clients]
    cpu, wall = time.process_time(), time.perf_counter()
    for chs in channels:
        for ch in chs if args.order == "oldest" else reversed(chs):
            await ch.close()
    closed_cpu, closed_wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"open {args.channels}: cpu {opened_cpu:.2f}s wall {opened_wall:.2f}s; "
        f"close ({args.order} first): cpu {closed_cpu:.2f}s wall {closed_wall:.2f}s; "
        f"callbacks on each connection's closing: {pending_open} open, "
        f"{[_pending(c) for c in clients]} after"
    )
    for client in clients:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
