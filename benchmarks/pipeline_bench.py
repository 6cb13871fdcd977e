"""HTTP -> broker -> trigger -> HTTP sink: rabbitmesh against the thin reference pipeline.

Runs, back to back on this machine and with the same RabbitMQ, for each round:
  1. ../shared/bench/thin_pipeline.py (the thinnest honest Python pipeline) — saturated;
  2. `rabbitmesh run` with one broker and one trigger (the sink = loadgen's) — saturated;
  3. both again paced at --rate events/s for p50/p99 latency.
Load and sink are ../shared/bench/loadgen.py. Prints one JSON line per run and a summary.

    python benchmarks/pipeline_bench.py                 # 2 rounds, 5000 events, rate 500
    python benchmarks/pipeline_bench.py --rounds 3 --n 10000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up in {timeout}s")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not open in {timeout}s")


def loadgen(
    bench: Path, ingress: str, sink_port: int, n: int, concurrency: int, rate: float
) -> dict:
    cmd = [
        sys.executable,
        str(bench / "loadgen.py"),
        "--ingress",
        ingress,
        "--sink-port",
        str(sink_port),
        "--n",
        str(n),
        "--concurrency",
        str(concurrency),
    ]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def start_thin(bench: Path, port: int, sink_port: int, uvloop: bool) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(bench / "thin_pipeline.py"),
        str(port),
        f"http://127.0.0.1:{sink_port}/",
    ]
    if uvloop:
        cmd.append("uvloop")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def start_rabbitmesh(
    port: int, sink_port: int, workdir: Path, extra_env: dict[str, str]
) -> subprocess.Popen:
    config = workdir / f"config-{port}"
    config.mkdir()
    (config / "bench.yaml").write_text(f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: bench}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: sink}}
spec:
  broker: bench
  filter: {{attributes: {{type: com.example.load}}}}
  subscriber: {{uri: "http://127.0.0.1:{sink_port}/"}}
""")
    env = {
        **os.environ,
        "RABBITMESH_HTTP_PORT": str(port),
        "RABBITMESH_HTTP_HOST": "127.0.0.1",
        "RABBITMESH_CONFIG_DIR": str(config),
        "RABBITMESH_LOG_LEVEL": "warning",
        "RABBITMESH_TOPOLOGY_PREFIX": f"rmbench-{uuid.uuid4().hex[:8]}",
        **extra_env,
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "rabbitmesh", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return p


class Split:
    """`rabbitmesh run --role ingress` and `--role dispatcher` as two processes (two cores)."""

    def __init__(self, port: int, sink_port: int, workdir: Path) -> None:
        prefix = f"rmbench-{uuid.uuid4().hex[:8]}"
        common = {"RABBITMESH_TOPOLOGY_PREFIX": prefix}
        self.procs = [
            start_rabbitmesh(port, sink_port, workdir, {**common, "RABBITMESH_ROLE": "ingress"}),
            start_rabbitmesh(
                free_port(), sink_port, workdir, {**common, "RABBITMESH_ROLE": "dispatcher"}
            ),
        ]

    def terminate(self) -> None:
        for p in self.procs:
            p.terminate()

    def wait(self, timeout: float) -> None:
        for p in self.procs:
            p.wait(timeout)

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def run_one(name: str, start, bench: Path, a: argparse.Namespace) -> list[dict]:
    results = []
    port, sink = free_port(), free_port()
    proc = start(port, sink)
    try:
        path = "/default/bench"
        for mode, rate in (("saturated", 0.0), (f"paced@{a.rate:g}", a.rate)):
            n = a.n if not rate else int(a.rate * a.paced_seconds)
            r = loadgen(bench, f"http://127.0.0.1:{port}{path}", sink, n, a.concurrency, rate)
            r.update(pipeline=name, mode=mode)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        stop(proc)
    return results


def cleanup(prefix: str = "rmbench-") -> None:
    """Delete the queues and exchanges benchmark runs declared (and thin's own)."""
    import asyncio

    import aio_pika

    def names(what: str) -> list[str]:
        out = subprocess.run(
            ["rabbitmqctl", f"list_{what}", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
        ).stdout
        return [n.strip() for n in out.splitlines() if n.strip().startswith(prefix)]

    async def delete() -> None:
        conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1/")
        async with conn:
            for q in names("queues"):
                await (await conn.channel()).queue_delete(q)
            for x in names("exchanges"):
                await (await conn.channel()).exchange_delete(x)

    asyncio.run(delete())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=REPO.parent / "shared" / "bench")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--paced-seconds", type=float, default=10)
    a = ap.parse_args()
    if not (a.bench_dir / "loadgen.py").exists():
        raise SystemExit(
            f"loadgen.py not found in {a.bench_dir}: the load generator and the thin reference "
            "pipeline live beside the repository in ../shared/bench (the project's steering "
            "repository), not in it; point --bench-dir at a copy"
        )
    work = Path(tempfile.mkdtemp(prefix="rmbench-"))
    pipelines = {
        "thin": lambda port, sink: start_thin(a.bench_dir, port, sink, uvloop=False),
        "thin+uvloop": lambda port, sink: start_thin(a.bench_dir, port, sink, uvloop=True),
        "rabbitmesh": lambda port, sink: start_rabbitmesh(port, sink, work, {}),
        "rabbitmesh 2 processes": lambda port, sink: Split(port, sink, work),
    }
    all_results: list[dict] = []
    try:
        order = list(pipelines.items())
        for round_no in range(a.rounds):
            # Alternate the order so drift on a shared machine does not favour one pipeline.
            for name, start in order if round_no % 2 == 0 else reversed(order):
                all_results += run_one(name, start, a.bench_dir, a)
    finally:
        cleanup()

    def figure(name: str, mode: str, key: str) -> float:
        vals = [r[key] for r in all_results if r["pipeline"] == name and r["mode"] == mode]
        return statistics.median(vals) if vals else float("nan")

    sat, paced = "saturated", f"paced@{a.rate:g}"
    print("\nmedian over rounds          delivered/s   p50 ms   p99 ms (paced)   lost")
    for name in pipelines:
        # lost = accepted (202) but never delivered
        lost = sum(
            r["codes"].get("202", 0) - r["delivered"] for r in all_results if r["pipeline"] == name
        )
        print(
            f"  {name:24s} {figure(name, sat, 'delivered_per_s'):11.0f} "
            f"{figure(name, paced, 'p50_ms'):8.1f} {figure(name, paced, 'p99_ms'):8.1f}"
            f"          {lost}"
        )
    best_thin = max(
        figure("thin", sat, "delivered_per_s"), figure("thin+uvloop", sat, "delivered_per_s")
    )
    for name in ("rabbitmesh", "rabbitmesh 2 processes"):
        ratio = figure(name, sat, "delivered_per_s") / best_thin
        print(f"{name} / best thin pipeline throughput: {ratio:.0%}")


if __name__ == "__main__":
    main()
