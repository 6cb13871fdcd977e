"""HTTP -> broker -> trigger -> HTTP sink: rabbitmesh against the thin reference pipeline.

For each round, back to back on this machine and with the same RabbitMQ, every pipeline is
started, loaded saturated (--n events, --concurrency in flight) and then paced at each
--rate for --paced-seconds (p50/p99 latency, CPU per event), then stopped:
  thin, thin+uvloop  ../shared/bench/thin_pipeline.py (the thinnest honest Python pipeline)
  rabbitmesh         `rabbitmesh run` with its defaults (one worker per core)
  rabbitmesh 1 worker  `rabbitmesh run --workers 1`
Load and sink are ../shared/bench/loadgen.py. Prints one JSON line per run, then a table of
medians over the rounds with each pipeline's throughput as a share of plain thin's.

It also measures what the rest of the machine spends per event while a pipeline runs
saturated: RabbitMQ's own CPU (its Erlang VM) and the load generator's with its sink. On a
machine where they share the cores with the pipeline, `cores / (RabbitMQ + load) ms per event`
is the ceiling no pipeline can pass, however little CPU it uses itself: the table prints it.

    python benchmarks/pipeline_bench.py                    # 2 rounds, 5000 events
    python benchmarks/pipeline_bench.py --rounds 3 --n 10000 --rate 500 --rate 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    REPO,
    Ports,
    amqp_url,
    broker_manifests,
    cleanup,
    cpu_seconds,
    emit,
    rabbitmq_pid,
    start_rabbitmesh,
    start_thin,
    stop,
    table,
)


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


def children_cpu() -> float:
    """CPU of this script's finished children (the load generator, once it has exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(
    name: str,
    start: Callable[[int, int], subprocess.Popen],
    bench: Path,
    a: argparse.Namespace,
    ports: Ports,
    rabbit: int | None,
) -> list[dict]:
    results = []
    port, sink = ports(), ports()
    proc = start(port, sink)
    try:
        ingress = f"http://127.0.0.1:{port}/default/bench"
        for rate in (0.0, *a.rate):
            n = a.n if not rate else int(rate * a.paced_seconds)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            load0 = children_cpu()
            rabbit0 = cpu_seconds(rabbit) if rabbit else 0.0
            r = loadgen(bench, ingress, sink, n, a.concurrency, rate)
            cpu = cpu_seconds(proc.pid) - cpu0
            per_event = 1000 / max(1, r["delivered"])
            r.update(
                pipeline=name,
                mode="saturated" if not rate else f"paced@{rate:g}",
                cpu_ms_per_event=round(cpu * per_event, 3),
                load_cpu_ms_per_event=round((children_cpu() - load0) * per_event, 3),
                seconds=round(time.monotonic() - t0, 1),
            )
            if rabbit:
                r["rabbitmq_cpu_ms_per_event"] = round(
                    (cpu_seconds(rabbit) - rabbit0) * per_event, 3
                )
            emit(r)
            results.append(r)
    finally:
        stop(proc)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=REPO.parent / "shared" / "bench")
    ap.add_argument("--amqp-url", help="default: $RABBITMESH_TEST_AMQP_URL or the local one")
    ap.add_argument("--port-base", type=int, help="bind ports from here up (default: any free)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, action="append", help="paced rates (default 500, 1000)")
    ap.add_argument("--paced-seconds", type=float, default=10)
    ap.add_argument(
        "--only", action="append", help="run only these pipelines (repeatable), e.g. thin"
    )
    a = ap.parse_args()
    a.rate = a.rate or [500.0, 1000.0]
    if not (a.bench_dir / "loadgen.py").exists():
        raise SystemExit(
            f"loadgen.py not found in {a.bench_dir}: the load generator and the thin reference "
            "pipeline live beside the repository in ../shared/bench (the project's steering "
            "repository), not in it; point --bench-dir at a copy"
        )
    amqp = amqp_url(a.amqp_url)
    ports = Ports(a.port_base)

    def mesh(workers: int | None) -> Callable[[int, int], subprocess.Popen]:
        return lambda port, sink: start_rabbitmesh(
            port,
            broker_manifests(f"http://127.0.0.1:{sink}", [("sink", "com.example.load")]),
            amqp,
            workers=workers,
        )

    pipelines: dict[str, Callable[[int, int], subprocess.Popen]] = {
        "thin": lambda port, sink: start_thin(
            a.bench_dir, port, f"http://127.0.0.1:{sink}/", amqp, uvloop=False
        ),
        "thin+uvloop": lambda port, sink: start_thin(
            a.bench_dir, port, f"http://127.0.0.1:{sink}/", amqp, uvloop=True
        ),
        "rabbitmesh (default)": mesh(None),
        "rabbitmesh --workers 1": mesh(1),
    }
    if a.only:
        pipelines = {k: v for k, v in pipelines.items() if k.split()[0] in a.only or k in a.only}
    results: list[dict] = []
    rabbit = rabbitmq_pid()
    if rabbit is None:
        print("RabbitMQ's pid not found (rabbitmqctl): its CPU is not measured", file=sys.stderr)
    try:
        order = list(pipelines.items())
        for round_no in range(a.rounds):
            # Alternate the order so drift on a shared machine does not favour one pipeline.
            for name, start in order if round_no % 2 == 0 else reversed(order):
                results += run_one(name, start, a.bench_dir, a, ports, rabbit)
    finally:
        cleanup(amqp)

    def med(name: str, mode: str, key: str) -> float:
        vals = [r[key] for r in results if r["pipeline"] == name and r["mode"] == mode]
        return statistics.median(vals) if vals else float("nan")

    def spread(name: str, mode: str, key: str) -> str:
        vals = [r[key] for r in results if r["pipeline"] == name and r["mode"] == mode]
        return "/".join(f"{v:g}" for v in vals)

    base = med("thin", "saturated", "delivered_per_s")
    headers = ["pipeline", "delivered/s saturated", "vs thin"]
    for rate in a.rate:
        headers += [f"p50 ms @{rate:g}/s", f"p99 ms @{rate:g}/s (each round)"]
    headers += [f"CPU ms/event @{a.rate[0]:g}/s", "lost"]
    headers += ["RabbitMQ + load ms/event saturated", "machine ceiling /s"]
    cores = os.cpu_count() or 1
    rows = []
    for name in pipelines:
        sat = med(name, "saturated", "delivered_per_s")
        row: list[object] = [name, f"{sat:.0f}", f"{sat / base:.0%}" if base else "-"]
        for rate in a.rate:
            mode = f"paced@{rate:g}"
            row += [f"{med(name, mode, 'p50_ms'):.1f}", spread(name, mode, "p99_ms")]
        # lost = accepted (202) but never delivered
        lost = sum(
            r["codes"].get("202", 0) - r["delivered"] for r in results if r["pipeline"] == name
        )
        row += [f"{med(name, f'paced@{a.rate[0]:g}', 'cpu_ms_per_event'):.2f}", lost]
        # What the rest of the machine spent per event: with it, no pipeline on these cores
        # can pass cores / that, even at no CPU of its own.
        rest = med(name, "saturated", "load_cpu_ms_per_event")
        if rabbit:
            rest += med(name, "saturated", "rabbitmq_cpu_ms_per_event")
        row += [f"{rest:.2f}", f"{cores * 1000 / rest:.0f}" if rest > 0 else "-"]
        rows.append(row)
    print(f"\nmedians over {a.rounds} rounds, {a.n} events saturated at {a.concurrency} in flight")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
