"""A hostile client in its own process, for the attack-under-load test (docs/security.md).

    python -m tests.support.attacker URL SECONDS

For SECONDS it repeats, back to back, the three attacks of the security review that once hurt
everyone else: events whose attributes overflow RabbitMQ's frame (they used to close the
shared publisher connection), 4 MiB YAML bodies to the admin API's /apply (parsed on the event
loop), and 4 MiB batches of 70,000 tiny events (decoded before their 413). It prints one JSON
line: how many of each it sent and the statuses it got. Bounded in time and count, loopback
only. A process of its own, so that its CPU is not taken from the legitimate senders' client.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import aiohttp
import orjson

ATTACKS = ("frame", "yaml", "batch")


def frame_bomb() -> tuple[dict[str, str], bytes]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "attack",
        "ce-type": "com.example.attack",
        "ce-source": "attacker",
        "content-type": "application/json",
    }
    headers.update({f"ce-x{i}": "x" * 7000 for i in range(24)})
    return headers, b"{}"


def yaml_bomb() -> bytes:
    item = "- {apiVersion: v1, kind: Secret, metadata: {name: s%d}, stringData: {k: v}}\n"
    lines: list[str] = []
    size = 0
    n = 0
    while size < 4 * 1024 * 1024:
        line = item % n
        lines.append(line)
        size += len(line)
        n += 1
    return "".join(lines).encode()


def batch_bomb() -> bytes:
    one = {"specversion": "1.0", "id": "", "type": "t", "source": "s"}
    return orjson.dumps([{**one, "id": str(i)} for i in range(70_000)])


async def run(url: str, seconds: float) -> dict[str, object]:
    frame_headers, frame_body = frame_bomb()
    yaml_body = yaml_bomb()
    batch_body = batch_bomb()
    statuses: dict[str, Counter[str]] = {a: Counter() for a in ATTACKS}
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=60)

    async def repeat(attack: str) -> None:
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while time.monotonic() < deadline:
                try:
                    if attack == "frame":
                        req = s.post(f"{url}/default/br", headers=frame_headers, data=frame_body)
                    elif attack == "yaml":
                        req = s.post(
                            f"{url}/apply",
                            headers={"content-type": "application/yaml"},
                            data=yaml_body,
                        )
                    else:
                        req = s.post(
                            f"{url}/default/br",
                            headers={"content-type": "application/cloudevents-batch+json"},
                            data=batch_body,
                        )
                    async with req as r:
                        await r.read()
                        statuses[attack][str(r.status)] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    statuses[attack][type(e).__name__] += 1

    await asyncio.gather(*(repeat(a) for a in ATTACKS))
    return {a: dict(c) for a, c in statuses.items()}


def main() -> None:
    url, seconds = sys.argv[1], float(sys.argv[2])
    print(orjson.dumps(asyncio.run(run(url, seconds))).decode(), flush=True)


if __name__ == "__main__":
    main()
