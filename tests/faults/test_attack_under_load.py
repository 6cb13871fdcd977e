"""Attack under load (docs/security.md): 20 legitimate senders keep their throughput while an
attacker repeats the three attacks that used to hurt everyone (attributes over RabbitMQ's
frame size, 4 MiB YAML to /apply, 4 MiB batches of 70,000 events), and nothing accepted is
lost.

The attacker shares the machine's two cores; in quiet phases it spins for as much CPU as it
used attacking, so the ratio is what the attacks cost rabbitmesh, not the attacker's own client
(tests/support/attacker.py).

The legitimate rate is measured, not assumed, in the same run: the legitimate senders run
throughout while the attacker (a process of its own) attacks in alternate phases, in the
order attack-quiet-quiet-attack twice. Each accepted event counts for the phase it was sent
in, so slow drift (a busy machine, the delivery backlog growing) weighs on both sides alike.
Other work on the machine (a CI host's neighbours) can only lower the ratio: the test takes up
to three measurements and holds the best to the bound.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.faults.conftest import TriggerSpec
from tests.support.attacker import phase_at
from tests.support.events import binary_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SENDERS = 20
PHASE_SECONDS = 3.0
PATTERN = "AQQAAQQA"  # symmetric (drift weighs alike); an A first (tests/support/attacker.py)
#: The issue's figure, on a machine whose cores are not taken by other work (CI's, and any
#: quiet one: 91-96% measured). With both cores already busy (benchmarks/cpu_burner.py), the
#: attacks' ~0.1 of a core of server work can only come out of rabbitmesh's fair share, and the
#: same code measured 79.6-96% in six runs: whoever runs the suite on a machine busy on purpose
#: says so (RABBITMESH_TEST_BUSY_MACHINE=1, as the burner loop does), and the bound then only
#: catches a real regression (15-21% before the fixes of issue 11).
MIN_RATIO = 0.8
MIN_RATIO_ON_A_BUSY_MACHINE = 0.7
#: Measurements at most; the bound applies to the best (the test, below).
MEASUREMENTS = 3
BUSY_MACHINE = os.environ.get("RABBITMESH_TEST_BUSY_MACHINE", "") not in ("", "0")


async def legit_load(url: str, start: float) -> dict[str, tuple[str, bool]]:
    """20 closed-loop senders from now until the last phase ends: every event id with the
    phase it was sent in (`W` for the warm-up before `start`) and whether RabbitMQ
    confirmed it (202)."""

    def phase_now() -> str | None:
        now = time.time()
        return "W" if now < start else phase_at(now, start, PHASE_SECONDS, PATTERN)

    sent: dict[str, tuple[str, bool]] = {}
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as s:

        async def sender() -> None:
            while (phase := phase_now()) is not None:
                event_id = f"legit-{next(counter)}"
                ok = False
                try:
                    async with s.post(
                        f"{url}/default/br",
                        headers=binary_headers("com.example.legit", event_id),
                        data=b'{"ok":true}',
                    ) as r:
                        await r.read()
                        ok = r.status == 202
                except (aiohttp.ClientError, TimeoutError):
                    pass  # not accepted: that is what the ratio measures
                sent[event_id] = (phase, ok)

        await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return sent


@dataclass
class Measurement:
    """One run of the attacker against the legitimate senders."""

    quiet: int  # legitimate events accepted in the quiet phases
    attacked: int  # ... and in the attack phases
    report: dict[str, Any]  # the attacker's: statuses per attack, CPU share per phase
    accepted: set[str]  # every legitimate event id answered 202

    @property
    def ratio(self) -> float:
        return self.attacked / max(self.quiet, 1)

    @property
    def mirrored(self) -> bool:
        """The attacker's own CPU weighed alike on both kinds of phase (the quiet ones mirror
        it): only then does the ratio measure what the attacks cost rabbitmesh."""
        share = self.report["cpu_share"]
        return bool(0.7 * share["A"] <= share["Q"] <= 1.3 * share["A"])

    def __str__(self) -> str:
        return (
            f"accepted quiet {self.quiet}, under attack {self.attacked} ({self.ratio:.0%}); "
            f"attacker {self.report}"
        )


async def measure(url: str) -> Measurement:
    # The attacker builds its bodies before the first phase; a warm-up phase (sent before
    # `start`, counted as neither) lets both sides reach a steady state.
    start = time.time() + 3.0
    attacker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.attacker",
        url,
        str(start),
        str(PHASE_SECONDS),
        PATTERN,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        sent = await legit_load(url, start)
        out, _ = await asyncio.wait_for(attacker.communicate(), timeout=120)
    finally:
        if attacker.returncode is None:
            attacker.kill()

    report = orjson.loads(out.splitlines()[-1])
    # The attacks really ran, and each was refused as too large, never accepted or a 5xx:
    # checked in every measurement, whatever its ratio.
    for attack, statuses in report["statuses"].items():
        assert sum(statuses.values()) >= 2 * PATTERN.count("A"), f"{attack}: {statuses}"
        assert set(statuses) <= {"413", "400"}, f"{attack}: {statuses}"

    def accepted_in(letter: str) -> int:
        return sum(1 for phase, ok in sent.values() if ok and phase == letter)

    return Measurement(
        quiet=accepted_in("Q"),
        attacked=accepted_in("A"),
        report=report,
        accepted={event_id for event_id, (_, ok) in sent.items() if ok},
    )


@pytest.mark.timeout(420)
async def test_legitimate_senders_keep_80_percent_under_attack(meshes, sinks):
    # History (docs/security.md, "Attack under load"): 15-21% before refused bodies stopped
    # being parsed; 72-83% on a quiet machine once they were dropped unparsed; 91, 93, 91, 91,
    # 95% (five runs in a row, quiet machine, 2026-12-03) once refused bodies are not read at
    # all and an over-long batch is judged by one parse of its start.
    sink = await sinks("legit")
    mesh = await meshes([TriggerSpec("tr", sink, delivery="{retry: 3}")])
    bound = MIN_RATIO_ON_A_BUSY_MACHINE if BUSY_MACHINE else MIN_RATIO

    # Other work on the machine can only lower a ratio, never raise it: up to MEASUREMENTS
    # are taken and the bound applies to the best one that mirrored the attacker's CPU (the
    # one least disturbed, as timeit takes the minimum). A real regression lowers them all.
    measurements: list[Measurement] = []
    for _ in range(MEASUREMENTS):
        m = await measure(mesh.url)
        measurements.append(m)
        print(f"{m}; busy machine declared: {BUSY_MACHINE}")
        assert m.quiet > 0, m
        if m.mirrored and m.ratio >= bound:
            break
    valid = [m for m in measurements if m.mirrored]
    assert valid, "the attacker's CPU was not mirrored in any measurement: " + "; ".join(
        map(str, measurements)
    )
    best = max(valid, key=lambda m: m.ratio)
    assert best.ratio >= bound, (
        f"legitimate accepted events fell to {best.ratio:.0%} under attack at best "
        f"(bound {bound:.0%}, busy machine declared: {BUSY_MACHINE}): "
        + "; ".join(map(str, measurements))
    )
    # The shared publisher connection was never closed by an attack.
    log = mesh.output()
    assert "frame_too_large" not in log
    assert not re.search(r"RabbitMQ connection \S+ lost", log), log[-3000:]

    accepted = set().union(*(m.accepted for m in measurements))
    await eventually(
        lambda: accepted <= set(sink.ok),
        timeout=120,
        what=f"all {len(accepted)} accepted events delivered",
    )
