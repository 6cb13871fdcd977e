"""A hostile client in its own process, for the attack-under-load test (docs/security.md).

    python -m tests.support.attacker URL START PHASE_SECONDS PATTERN

PATTERN is a string of phases, `A` (attack) or `Q` (quiet), each PHASE_SECONDS long, the first
starting at the Unix time START (an `A` first, so every `Q` can mirror an `A`, below). In
each `A` phase it repeats the three attacks of the security review that once hurt everyone
else, each RATE times a second: events whose attributes overflow RabbitMQ's frame (they used
to close the shared publisher connection), 4 MiB YAML bodies to the admin API's /apply
(parsed on the event loop), and 4 MiB batches of 70,000 tiny events (decoded before their
413). It prints one JSON line: how many of each it sent and the statuses it got, and the CPU
it used in each kind of phase. Bounded in time and count, loopback only. A process of its
own, so that its CPU is not taken from the legitimate senders' client.

A real attacker runs on its own machine; this one shares the two cores with rabbitmesh and the
legitimate senders. So in each `Q` phase after an `A` phase it spins for as much CPU as it used
attacking (its whole process's CPU per second of `A` so far): the scheduler's share the
attacker's own client takes is then the same in both kinds of phase, and the test's ratio
measures what the attacks cost rabbitmesh (on a machine whose cores are busy with other work,
the attacker's own ~0.08 of a core alone was ~8% of what the legitimate pipeline got there).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

ATTACKS = tuple(os.environ.get("ATTACKS", "frame,yaml,batch").split(","))
#: Requests a second of each attack, and how many of one kind may be unanswered at once: the
#: rates of the security review's reproduction (~18 frame attacks a second; 16 batches in
#: parallel).
RATE = float(os.environ.get("ATTACK_RATE", "20"))
PARALLEL = 16


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


def phase_at(now: float, start: float, phase_seconds: float, pattern: str) -> str | None:
    """The phase letter at `now`, or None before the first and after the last."""
    if now < start:
        return "Q"
    index = int((now - start) / phase_seconds)
    return pattern[index] if index < len(pattern) else None


async def run(url: str, start: float, phase_seconds: float, pattern: str) -> dict[str, object]:
    frame_headers, frame_body = frame_bomb()
    yaml_body = yaml_bomb()
    batch_body = batch_bomb()
    statuses: dict[str, Counter[str]] = {a: Counter() for a in ATTACKS}
    timeout = aiohttp.ClientTimeout(total=60)

    def request(s: aiohttp.ClientSession, attack: str) -> Any:
        if attack == "frame":
            return s.post(f"{url}/default/br", headers=frame_headers, data=frame_body)
        if attack == "yaml":
            return s.post(
                f"{url}/apply", headers={"content-type": "application/yaml"}, data=yaml_body
            )
        return s.post(
            f"{url}/default/br",
            headers={"content-type": "application/cloudevents-batch+json"},
            data=batch_body,
        )

    async def one(s: aiohttp.ClientSession, attack: str, slots: asyncio.Semaphore) -> None:
        try:
            async with request(s, attack) as r:
                await r.read()
                statuses[attack][str(r.status)] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            statuses[attack][type(e).__name__] += 1
        finally:
            slots.release()

    async def repeat(attack: str) -> None:
        """RATE requests a second during attack phases, each on its own schedule (an attacker
        does not wait for its answers), at most PARALLEL at once."""
        slots = asyncio.Semaphore(PARALLEL)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while (phase := phase_at(time.time(), start, phase_seconds, pattern)) is not None:
                if phase == "A" and not slots.locked():
                    await slots.acquire()
                    task = asyncio.create_task(one(s, attack, slots))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    await asyncio.sleep(1 / RATE)  # the attacker's own pacing
                else:
                    await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)

    async def mirror() -> None:
        """In quiet phases, use as much CPU per second as attacking did (module docstring)."""
        cpu_in = {"A": 0.0, "Q": 0.0}
        wall_in = {"A": 0.0, "Q": 0.0}
        last, cpu0, wall0 = "W", time.process_time(), time.monotonic()
        while (phase := phase_at(time.time(), start, phase_seconds, pattern)) is not None:
            phase = phase if time.time() >= start else "W"
            if phase != last:  # a new phase: book the one that ended
                if last in cpu_in:
                    cpu_in[last] += time.process_time() - cpu0
                    wall_in[last] += time.monotonic() - wall0
                last, cpu0, wall0 = phase, time.process_time(), time.monotonic()
            if phase == "Q" and wall_in["A"] > 0:
                target = cpu0 + cpu_in["A"] / wall_in["A"] * (time.monotonic() - wall0)
                stop_at = time.monotonic() + 0.02  # short slices: the loop keeps running
                while time.process_time() < target and time.monotonic() < stop_at:
                    pass
            await asyncio.sleep(0.005)
        if last in cpu_in:
            cpu_in[last] += time.process_time() - cpu0
            wall_in[last] += time.monotonic() - wall0
        for p in cpu_in:
            cpu_share[p] = round(cpu_in[p] / wall_in[p], 3) if wall_in[p] else 0.0

    cpu_share: dict[str, float] = {}
    await asyncio.gather(mirror(), *(repeat(a) for a in ATTACKS))
    return {"statuses": {a: dict(c) for a, c in statuses.items()}, "cpu_share": cpu_share}


def main() -> None:
    url, start, phase_seconds, pattern = sys.argv[1:5]
    report = asyncio.run(run(url, float(start), float(phase_seconds), pattern))
    print(orjson.dumps(report).decode(), flush=True)


if __name__ == "__main__":
    main()
