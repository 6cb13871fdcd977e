"""What the attack-under-load test's attacks cost, in CPU seconds: robust to a busy machine
where the test's throughput ratio is not (docs/security.md, "Attack under load").

    eval "$(scripts/private-rabbitmq.sh N)"  # or any RabbitMQ: --amqp-url, RABBITMESH_TEST_AMQP_URL
    .venv/bin/python benchmarks/attack_cost.py [--seconds 6] [--port-base P] \\
        [--attacks frame,yaml,batch]

Starts `rabbitmesh run` (a Broker, one Trigger to a sink of its own), then measures one after
the other:

- `idle`: rabbitmesh doing nothing for the same time (subtracted from the rest);
- `legit`: events posted by 20 closed-loop senders (the test's legitimate load) and
  delivered by a Trigger to a sink: the server's CPU per event (ingress and delivery);
- each attack of tests/support/attacker.py alone, at its rate (20 a second, 16 at once):
  the server's CPU per refused request (rabbitmesh's processes, workers and their children),
  and the attacker process' own CPU per request (user and system time; on the same machine
  its sending competes with the server for the cores).

Prints one JSON line per measurement and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
from benchlib import (
    REPO,
    CountingSink,
    Ports,
    amqp_url,
    cleanup,
    cpu_seconds,
    emit,
    running,
    start_rabbitmesh,
    table,
)

sys.path.insert(0, str(REPO))
from tests.support.events import binary_headers  # noqa: E402


async def legit(url: str, sink_port: int, seconds: float, senders: int = 20) -> int:
    """Accepted events of `senders` closed-loop senders in `seconds`, once every one of them
    reached the Trigger's sink."""
    import aiohttp

    sink = await CountingSink(sink_port).start()
    accepted = 0
    counter = itertools.count()
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=senders)) as s:

        async def sender() -> None:
            nonlocal accepted
            while time.monotonic() < deadline:
                headers = binary_headers("com.example.legit", f"legit-{next(counter)}")
                async with s.post(f"{url}/default/br", headers=headers, data=b"{}") as r:
                    await r.read()
                    accepted += r.status == 202

        await asyncio.gather(*(sender() for _ in range(senders)))
    if not await sink.wait_for(accepted, timeout=120):
        raise SystemExit(f"only {sink.count} of {accepted} accepted events were delivered")
    await sink.stop()
    return accepted


def attack(url: str, kind: str, seconds: float) -> tuple[dict[str, int], float, float]:
    """Run the attacker (a child process) for one attack phase: its statuses, and its own
    user and system CPU seconds during the phase (not its start-up and body building)."""
    start = time.time() + 3.0  # the attacker imports and builds its bodies first
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.attacker", url, str(start), str(seconds), "A"],
        cwd=REPO,
        env={**os.environ, "ATTACKS": kind},
        stdout=subprocess.PIPE,
    )
    time.sleep(max(0.0, start - time.time()))  # a benchmark's pacing, not synchronisation
    user0, sys0 = cpu_split(proc.pid)
    time.sleep(seconds)
    user1, sys1 = cpu_split(proc.pid)
    out, _ = proc.communicate(timeout=120)
    report = orjson.loads(out.splitlines()[-1])
    return dict(report["statuses"][kind]), user1 - user0, sys1 - sys0


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url")
    parser.add_argument("--port-base", type=int)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--attacks", default="frame,yaml,batch")
    args = parser.parse_args()
    amqp = amqp_url(args.amqp_url)
    ports = Ports(args.port_base)
    port, sink_port = ports(), ports()
    url = f"http://127.0.0.1:{port}"
    rows = []
    # The attacker's target: Broker `br` in `default`, as in the test.
    manifests = (
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: br}\n---\n"
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: legit}\n"
        f'spec: {{broker: br, subscriber: {{uri: "http://127.0.0.1:{sink_port}/"}}}}\n'
    )
    with running(start_rabbitmesh(port, manifests, amqp)) as mesh:
        time.sleep(2.0)  # let start-up work settle before the idle baseline

        def server_cpu() -> float:
            return cpu_seconds(mesh.pid)

        before = server_cpu()
        time.sleep(args.seconds)
        idle = (server_cpu() - before) / args.seconds  # cores
        emit({"measure": "idle", "server_cores": round(idle, 4)})

        before, t0 = server_cpu(), time.monotonic()
        accepted = asyncio.run(legit(url, sink_port, args.seconds))
        spent = server_cpu() - before - idle * (time.monotonic() - t0)
        per = spent / max(accepted, 1)
        emit({"measure": "legit", "accepted": accepted, "server_us_per_event": round(per * 1e6)})
        rows.append(["legit event (accepted, delivered)", accepted, f"{per * 1e6:.0f} µs", "", ""])

        for kind in args.attacks.split(","):
            before = server_cpu()
            t0 = time.monotonic()
            report, user, system = attack(url, kind, args.seconds)
            spent = server_cpu() - before - idle * (time.monotonic() - t0)
            n = sum(report.values())
            record = {
                "measure": kind,
                "requests": n,
                "statuses": report,
                "server_ms_per_request": round(spent / max(n, 1) * 1e3, 3),
                "attacker_ms_per_request": round((user + system) / max(n, 1) * 1e3, 3),
                "attacker_sys_share": round(system / max(user + system, 1e-9), 2),
            }
            emit(record)
            rows.append(
                [
                    kind,
                    n,
                    f"{record['server_ms_per_request']:.2f} ms",
                    f"{record['attacker_ms_per_request']:.2f} ms",
                    ", ".join(f"{k}: {v}" for k, v in sorted(report.items())),
                ]
            )
    cleanup(amqp)
    print(
        table(
            ["measure", "count", "server CPU each", "attacker CPU each", "statuses"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
