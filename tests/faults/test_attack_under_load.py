"""Attack under load (docs/security.md): 20 legitimate senders keep their throughput while an
attacker repeats the three attacks that used to hurt everyone (attributes over RabbitMQ's
frame size, 4 MiB YAML to /apply, 4 MiB batches of 70,000 events), and nothing accepted is
lost.

The legitimate rate is measured, not assumed: a phase without the attacker before and after
the attacked phase, all in the same run, so a slow machine moves both sides alike.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time

import aiohttp
import orjson
import pytest

from tests.faults.conftest import TriggerSpec
from tests.support.events import binary_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SENDERS = 20
PHASE_SECONDS = 6.0


async def legit_phase(url: str, tag: str, seconds: float) -> set[str]:
    """20 closed-loop senders for `seconds`; the ids RabbitMQ confirmed (202)."""
    accepted: set[str] = set()
    counter = itertools.count()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as s:

        async def sender() -> None:
            while time.monotonic() < deadline:
                event_id = f"{tag}-{next(counter)}"
                try:
                    async with s.post(
                        f"{url}/default/br",
                        headers=binary_headers("com.example.legit", event_id),
                        data=b'{"ok":true}',
                    ) as r:
                        await r.read()
                        if r.status == 202:
                            accepted.add(event_id)
                except (aiohttp.ClientError, TimeoutError):
                    pass  # counted as not accepted: that is what the ratio measures

        await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return accepted


@pytest.mark.timeout(240)
async def test_legitimate_senders_keep_80_percent_under_attack(meshes, sinks):
    sink = await sinks("legit")
    mesh = await meshes([TriggerSpec("tr", sink, delivery="{retry: 3}")])

    before = await legit_phase(mesh.url, "before", PHASE_SECONDS)
    attacker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.attacker",
        mesh.url,
        str(PHASE_SECONDS + 1),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        # The attacker builds its bodies in well under a second and runs a second longer
        # than the measured phase, so the whole phase is under attack.
        during = await legit_phase(mesh.url, "during", PHASE_SECONDS)
        out, _ = await asyncio.wait_for(attacker.communicate(), timeout=120)
    finally:
        if attacker.returncode is None:
            attacker.kill()
    after = await legit_phase(mesh.url, "after", PHASE_SECONDS)

    report = orjson.loads(out.splitlines()[-1])
    # The attacks really ran, and each was refused as too large, never accepted or a 5xx.
    for attack in ("frame", "yaml", "batch"):
        statuses = report[attack]
        assert sum(statuses.values()) >= 2, f"{attack} attack barely ran: {statuses}"
        assert set(statuses) <= {"413", "400"}, f"{attack}: {statuses}"

    baseline = (len(before) + len(after)) / 2
    ratio = len(during) / baseline
    assert ratio >= 0.8, (
        f"legitimate accepted events fell to {ratio:.0%} under attack "
        f"(before {len(before)}, during {len(during)}, after {len(after)})"
    )
    # The shared publisher connection was never closed by an attack.
    log = mesh.output()
    assert "frame_too_large" not in log
    assert not re.search(r"RabbitMQ connection \S+ lost", log), log[-3000:]

    accepted = before | during | after
    await eventually(
        lambda: accepted <= set(sink.ok),
        timeout=120,
        what=f"all {len(accepted)} accepted events delivered",
    )
