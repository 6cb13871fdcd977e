"""Soak: `rabbitmesh run` at a steady rate for N minutes; RSS must stay flat, nothing lost.

Starts a real `rabbitmesh run` (one broker, two triggers, two counting sinks in this
process), sends binary CloudEvents at --rate events/s for --minutes, and samples the
rabbitmesh process' resident set size (VmRSS from /proc) at the start, every minute and at
the end. Then waits until every accepted event reached both sinks, prints a table and one
JSON line, and appends the JSON line to $RABBITMESH_FAULT_REPORT (docs/reliability.md).

    python benchmarks/soak.py                          # 10 minutes at 300 events/s
    python benchmarks/soak.py --minutes 1 --rate 200
    RABBITMESH_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/ python benchmarks/soak.py

Exit status 1 when an accepted event was lost or RSS grew past --max-growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.conftest import TriggerSpec, manifests  # noqa: E402 - after the path set-up
from tests.support.faults import IdSink, LoadGenerator, report, vm_rss_kib  # noqa: E402
from tests.support.mesh import (  # noqa: E402
    CREATED_PREFIXES,
    MeshProcess,
    unique_prefix,
    write_manifests,
)
from tests.support.rabbit import delete_everything  # noqa: E402


@dataclass
class SoakResult:
    minutes: float
    rate: float
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (minute, KiB)
    report: dict[str, object] = field(default_factory=dict)

    @property
    def start_kib(self) -> int:
        """RSS once warmed up: after the first fifth of the soak (at least a minute), caches,
        connection pools and the allocator's arenas have reached their working size. Python
        rarely hands memory back, so RSS keeps the high-water mark of a burst; a leak shows as
        growth after that, proportional to the time left."""
        warm = max(1, math.ceil(self.minutes / 5))
        samples = [k for m, k in self.rss_kib if m >= warm]
        return samples[0] if samples else self.rss_kib[-1][1]

    @property
    def end_kib(self) -> int:
        return self.rss_kib[-1][1]

    @property
    def growth(self) -> float:
        return (self.end_kib - self.start_kib) / self.start_kib


#: The end of a soak waits for the backlog as long as a delivery came in this many seconds.
STALL_SECONDS = 120.0


async def soak(minutes: float, rate: float) -> SoakResult:
    result = SoakResult(minutes, rate)
    a, b = await IdSink("a").start(), await IdSink("b").start()
    prefix = unique_prefix()
    config = Path(tempfile.mkdtemp(prefix="rabbitmesh-soak-"))
    # Half the events go to both triggers, half to `a` only: routing, filtering and fan-out.
    write_manifests(
        config,
        manifests(
            [
                TriggerSpec("a", a, type_=None),
                TriggerSpec("b", b, type_="com.example.soak.even"),
            ]
        ),
    )
    mesh = await MeshProcess(config, prefix).start()
    assert mesh.proc is not None
    pid = mesh.proc.pid
    started = time.monotonic()
    load = await LoadGenerator(
        mesh.url + "/default/br",
        rate=rate,
        tag="soak",
        type_of=lambda n: "com.example.soak.even" if n % 2 == 0 else "com.example.soak.odd",
    ).start()
    try:
        result.rss_kib.append((0.0, vm_rss_kib(pid)))
        print(f"minute 0: RSS {result.rss_kib[-1][1] / 1024:.1f} MiB", flush=True)
        whole = int(minutes)
        for m in range(1, whole + 1):
            await asyncio.sleep(started + 60 * m - time.monotonic())  # the soak's duration
            result.rss_kib.append((float(m), vm_rss_kib(pid)))
            print(
                f"minute {m}: RSS {result.rss_kib[-1][1] / 1024:.1f} MiB, "
                f"sent {load.sent}, answered {load.answered()}, accepted {load.count(202)}, "
                f"delivered {len(a.ok)} + {len(b.ok)}",
                flush=True,
            )
        if minutes > whole:
            await asyncio.sleep(started + 60 * minutes - time.monotonic())
            result.rss_kib.append((minutes, vm_rss_kib(pid)))
        await load.stop()
        accepted = load.accepted()
        even = even_ids(accepted)
        # On a busy machine the subscribers may be far behind when the load stops (a backlog
        # in RabbitMQ): wait as long as deliveries keep coming, and give up only after
        # STALL_SECONDS without one (what is still missing then is reported as lost).
        last_count, last_change = -1, time.monotonic()
        while a.missing(accepted) or b.missing(even):
            count = len(a.ok) + len(b.ok)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                break
            await asyncio.sleep(0.5)  # polling the sinks' counts, bounded by the stall limit
    finally:
        await load.stop()
        fault = report(f"soak {minutes:g} min at {rate:g}/s", load, [a], started)
        # `b` owes only the even events: count them separately.
        fault.expected += len(even_ids(load.accepted()))
        fault.delivered += len(even_ids(load.accepted()) & b.delivered())
        fault.duplicates += sum(c - 1 for c in b.ok.values())
        fault.lost = fault.expected - fault.delivered
        fault.notes = {
            "rss_first_mib": round(result.rss_kib[0][1] / 1024, 1),
            "rss_warm_mib": round(result.start_kib / 1024, 1),
            "rss_end_mib": round(result.end_kib / 1024, 1),
            "rss_mib_by_minute": [round(k / 1024, 1) for _, k in result.rss_kib],
        }
        result.report = fault.__dict__
        print(fault.line(), flush=True)
        fault.save()
        await mesh.stop()
        await a.down()
        await b.down()
        await delete_everything(tuple(p + "." for p in CREATED_PREFIXES))
    return result


def even_ids(ids: set[str]) -> set[str]:
    return {i for i in ids if int(i.rsplit("-", 1)[1]) % 2 == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="events per second")
    parser.add_argument(
        "--max-growth",
        type=float,
        default=0.1,
        help="largest allowed RSS growth from the end of warm-up (the first fifth) to the "
        "end (0.1 = 10%%)",
    )
    args = parser.parse_args()
    try:  # the load and the sinks share this process: give them the faster loop
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(soak(args.minutes, args.rate))
    print(json.dumps({"rss_kib": result.rss_kib, **result.report}))
    print(
        f"RSS at start {result.rss_kib[0][1] / 1024:.1f} MiB, after warm-up "
        f"{result.start_kib / 1024:.1f} MiB, at the end {result.end_kib / 1024:.1f} MiB: "
        f"growth after warm-up {result.growth:+.1%}"
    )
    if result.report.get("lost") or result.growth > args.max_growth:
        sys.exit(1)


if __name__ == "__main__":
    main()
