"""Data-plane scenarios of issue 18, each against the one-trigger baseline of the same run.

    python benchmarks/scenarios_bench.py fanout          # 10 triggers that all match
    python benchmarks/scenarios_bench.py many-triggers   # 1,000 triggers, one type each
    python benchmarks/scenarios_bench.py producers       # batches of 100; AMQP straight in
    python benchmarks/scenarios_bench.py all

Every scenario starts a real `rabbitmesh run` (its defaults: one worker per core) with a
fresh config dir and topology prefix, loads it saturated from this process (aiohttp, or
aio-pika for the AMQP producer) and counts deliveries at a sink in this process; the
baseline (one broker, one trigger, single binary events over HTTP) runs in the same round,
before or after (alternating). Prints one JSON line per run, then a table with each figure,
its ratio to the baseline, and the issue's target. `lost` is accepted minus delivered
(what the sink still missed after the wait; it must be 0). A batch answered 503 may have
been partly delivered (the producer is told to send it again: at-least-once), so deliveries
can exceed what was accepted.

Besides the figures, each run measures the CPU every party spent per event: this script
(load generator and sink), rabbitmesh (all its processes) and RabbitMQ (its Erlang VM). They
share the same cores, so `cores / (all of them)` is what the machine can carry and
`cores / (script + RabbitMQ)` the ceiling no broker layer could pass even at no cost of its
own: the table prints both beside each figure.

`producers` also runs each producer against the broker with no trigger and a durable queue
the script binds itself to the broker's exchange ("ingress only"): what producers get
accepted when no delivery competes for the cores (the queue depth is checked against what
was accepted: `lost` counts the difference).

RabbitMQ: --amqp-url, else $RABBITMESH_TEST_AMQP_URL, else $RABBITMESH_AMQP_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    BODY,
    CountingSink,
    Ports,
    QueueCount,
    amqp_url,
    broker_manifests,
    ce_headers,
    cleanup,
    cpu_seconds,
    emit,
    new_prefix,
    post_saturated,
    rabbitmq_pid,
    start_rabbitmesh,
    stop,
    table,
)

TYPE = "com.example.load"


class Run:
    def __init__(self, a: argparse.Namespace, ports: Ports) -> None:
        self.a = a
        self.ports = ports
        self.amqp = amqp_url(a.amqp_url)
        self.rabbit = rabbitmq_pid()

    async def mesh(
        self,
        triggers: list[tuple[str, str | None]],
        body: Callable[..., Awaitable[dict]],
        capture: bool = False,
    ) -> dict:
        """Start rabbitmesh with these triggers (subscriber: a CountingSink), run `body`
        and measure the CPU each party spent. `capture`: count what reaches a queue of the
        script's own bound to the broker's exchange instead (ingress only)."""
        port, sink_port = self.ports(), self.ports()
        prefix = new_prefix()
        sink: CountingSink | QueueCount = await CountingSink(sink_port).start()
        t0 = time.monotonic()
        proc = await asyncio.to_thread(
            start_rabbitmesh,
            port,
            broker_manifests(f"http://127.0.0.1:{sink_port}", triggers),
            self.amqp,
            self.a.workers,
            {"RABBITMESH_PREFETCH": "256"},
            prefix,
            self.a.startup_timeout,
        )
        started = time.monotonic() - t0
        try:
            if capture:
                await sink.stop()
                sink = await QueueCount(
                    self.amqp, f"{prefix}.broker.default.bench", f"{prefix}.capture"
                ).start()
            own0, mesh0 = time.process_time(), cpu_seconds(proc.pid)
            rabbit0 = cpu_seconds(self.rabbit) if self.rabbit else 0.0
            result = await body(f"http://127.0.0.1:{port}/default/bench", sink, prefix)
            result["startup_s"] = round(started, 1)
            per = 1000 / max(1, result["deliveries"])
            cpu = {
                "bench": (time.process_time() - own0) * per,
                "rabbitmesh": (cpu_seconds(proc.pid) - mesh0) * per,
            }
            if self.rabbit:
                cpu["rabbitmq"] = (cpu_seconds(self.rabbit) - rabbit0) * per
            result["cpu_ms_per_event"] = {k: round(v, 3) for k, v in cpu.items()}
            return result
        finally:
            await asyncio.to_thread(stop, proc)
            await sink.stop()

    async def http_singles(self, url: str, sink: CountingSink, fanout: int, type_: str) -> dict:
        n = self.a.n
        t0 = time.perf_counter()
        codes, took = await post_saturated(
            url, n, self.a.concurrency, lambda i: (ce_headers(type_, i), BODY)
        )
        accepted = codes.get(202, 0)
        await sink.wait_for(accepted * fanout, self.a.timeout)
        span = max(sink.last - t0, 1e-9)
        return {
            "codes": codes,
            "accepted_per_s": round(accepted / took),
            "deliveries": sink.count,
            "delivered_per_s": round(sink.count / span),
            "lost": max(0, accepted * fanout - sink.count),
        }

    async def http_batches(self, url: str, sink: CountingSink | QueueCount, size: int) -> dict:
        def batch(i: int) -> tuple[dict[str, str], bytes]:
            events = [
                {
                    "specversion": "1.0",
                    "id": f"{i}-{k}",
                    "type": TYPE,
                    "source": "bench",
                    "datacontenttype": "application/json",
                    "data": {"message": "hello", "pad": "x" * 200},
                }
                for k in range(size)
            ]
            return {"content-type": "application/cloudevents-batch+json"}, json.dumps(
                events
            ).encode()

        requests = max(1, self.a.n * self.a.batch_factor // size)
        t0 = time.perf_counter()
        codes, took = await post_saturated(url, requests, self.a.batch_concurrency, batch)
        accepted = codes.get(202, 0) * size
        await sink.wait_for(accepted, self.a.timeout)
        return {
            "codes": codes,
            "accepted_per_s": round(accepted / took),
            "deliveries": sink.count,
            "delivered_per_s": round(sink.count / max(sink.last - t0, 1e-9)),
            "lost": max(0, accepted - sink.count),
        }

    async def amqp_native(self, sink: CountingSink | QueueCount, prefix: str) -> dict:
        """Publish straight to the broker's exchange in the AMQP binding, with confirms
        (docs/contract.md §3): `window` publishes in flight, each awaited for its confirm."""
        import aio_pika

        n = self.a.n * self.a.batch_factor
        conn = await aio_pika.connect(self.amqp)
        accepted = 0
        try:
            ch = await conn.channel(publisher_confirms=True)
            exchange = await ch.get_exchange(f"{prefix}.broker.default.bench", ensure=False)
            sem = asyncio.Semaphore(self.a.amqp_window)

            async def one(i: int) -> None:
                nonlocal accepted
                h = ce_headers(TYPE, i)
                msg = aio_pika.Message(
                    BODY,
                    headers={k: v for k, v in h.items() if k.startswith("ce-")},
                    content_type="application/json",
                    message_id=h["ce-id"],
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                async with sem:
                    await exchange.publish(msg, routing_key=TYPE)
                    accepted += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            took = time.perf_counter() - t0
        finally:
            await conn.close()
        await sink.wait_for(accepted, self.a.timeout)
        return {
            "codes": {"confirmed": accepted},
            "accepted_per_s": round(accepted / took),
            "deliveries": sink.count,
            "delivered_per_s": round(sink.count / max(sink.last - t0, 1e-9)),
            "lost": max(0, accepted - sink.count),
        }

    # --- scenarios: name -> (triggers, body) ---------------------------------------------

    def baseline(self) -> Awaitable[dict]:
        return self.mesh(
            [("sink", TYPE)], lambda url, sink, _p: self.http_singles(url, sink, 1, TYPE)
        )

    def fanout(self) -> Awaitable[dict]:
        k = self.a.fanout
        return self.mesh(
            [(f"fan{i}", TYPE) for i in range(k)],
            lambda url, sink, _p: self.http_singles(url, sink, k, TYPE),
        )

    def many_triggers(self) -> Awaitable[dict]:
        k = self.a.triggers
        triggers: list[tuple[str, str | None]] = [(f"t{i}", f"com.example.t{i}") for i in range(k)]
        return self.mesh(
            triggers, lambda url, sink, _p: self.http_singles(url, sink, 1, "com.example.t0")
        )

    def batch(self) -> Awaitable[dict]:
        return self.mesh([("sink", TYPE)], lambda url, sink, _p: self.http_batches(url, sink, 100))

    def amqp_direct(self) -> Awaitable[dict]:
        return self.mesh(
            [("sink", TYPE)], lambda _url, sink, prefix: self.amqp_native(sink, prefix)
        )

    def batch_ingress(self) -> Awaitable[dict]:
        return self.mesh([], lambda url, sink, _p: self.http_batches(url, sink, 100), capture=True)

    def amqp_ingress(self) -> Awaitable[dict]:
        return self.mesh(
            [], lambda _url, sink, prefix: self.amqp_native(sink, prefix), capture=True
        )


#: scenario -> the runs it needs besides the baseline, with the figure that counts, the
#: target as a ratio to the baseline (or an absolute figure) and how it is described.
SCENARIOS: dict[str, list[tuple[str, str, str, float]]] = {
    "fanout": [("fanout", "delivered_per_s", "ratio", 3.0)],
    "many-triggers": [("many_triggers", "delivered_per_s", "ratio", 0.9)],
    "producers": [
        ("batch", "accepted_per_s", "absolute", 5000.0),
        ("amqp_direct", "accepted_per_s", "absolute", 5000.0),
        ("batch_ingress", "accepted_per_s", "absolute", 5000.0),
        ("amqp_ingress", "accepted_per_s", "absolute", 5000.0),
    ],
}

LABELS = {
    "baseline": "1 trigger, single HTTP events (baseline)",
    "fanout": "10 triggers all matching: deliveries/s",
    "many_triggers": "1,000 triggers, one type each: events of one",
    "batch": "HTTP batches of 100 (cloudevents-batch+json): accepted ev/s",
    "amqp_direct": "AMQP straight to the broker exchange: confirmed ev/s",
    "batch_ingress": "HTTP batches of 100, ingress only (no delivery): accepted ev/s",
    "amqp_ingress": "AMQP straight to the exchange, ingress only: confirmed ev/s",
}


async def main_async(a: argparse.Namespace) -> None:
    run = Run(a, Ports(a.port_base))
    wanted = list(SCENARIOS) if "all" in a.scenario else a.scenario
    runs = ["baseline"] + [r for s in wanted for r, *_ in SCENARIOS[s]]
    LABELS["fanout"] = f"{a.fanout} triggers all matching: deliveries/s"
    LABELS["many_triggers"] = f"{a.triggers:,} triggers, one type each: events of one"
    results: dict[str, list[dict]] = {r: [] for r in runs}
    try:
        for round_no in range(a.rounds):
            for name in runs if round_no % 2 == 0 else list(reversed(runs)):
                r: dict[str, Any] = await getattr(run, name)()
                r.update(run=name, round=round_no)
                emit(r)
                results[name].append(r)
    finally:
        await asyncio.to_thread(cleanup, run.amqp)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    cores = os.cpu_count() or 1

    def cpu_cells(name: str) -> list[object]:
        """ms of CPU per event: bench / rabbitmesh / RabbitMQ; what the machine carries;
        the ceiling at no rabbitmesh CPU."""
        parts = {
            k: statistics.median(r["cpu_ms_per_event"].get(k, 0.0) for r in results[name])
            for k in ("bench", "rabbitmesh", "rabbitmq")
        }
        total = sum(parts.values())
        others = parts["bench"] + parts["rabbitmq"]
        return [
            " / ".join(f"{v:.2f}" for v in parts.values()),
            f"{cores * 1000 / total:.0f}" if total else "-",
            f"{cores * 1000 / others:.0f}" if others else "-",
        ]

    base = med("baseline", "delivered_per_s")
    rows: list[list[object]] = [
        [
            LABELS["baseline"],
            f"{base:.0f} delivered/s",
            "1.00",
            "",
            sum(r["lost"] for r in results["baseline"]),
            f"{med('baseline', 'startup_s'):.1f}",
            *cpu_cells("baseline"),
        ]
    ]
    for s in wanted:
        for name, key, kind, target in SCENARIOS[s]:
            value = med(name, key)
            ratio = value / base if base else float("nan")
            goal = f"≥ {target:.1f}× baseline" if kind == "ratio" else f"≥ {target:,.0f}/s"
            met = ratio >= target if kind == "ratio" else value >= target
            rows.append(
                [
                    LABELS[name],
                    f"{value:.0f}",
                    f"{ratio:.2f}",
                    f"{goal} ({'met' if met else 'NOT met'})",
                    sum(r["lost"] for r in results[name]),
                    f"{med(name, 'startup_s'):.1f}",
                    *cpu_cells(name),
                ]
            )
    print(
        f"\nmedians over {a.rounds} round(s); {a.n} events per HTTP run, "
        f"{a.concurrency} in flight; rabbitmesh workers: {a.workers or 'default (one per core)'}"
    )
    headers = ["run", "figure", "× baseline", "target", "lost", "start-up s"]
    headers += [
        "CPU ms/event: bench / rabbitmesh / RabbitMQ",
        f"machine carries /s ({cores} cores)",
        "ceiling at no rabbitmesh CPU /s",
    ]
    print(table(headers, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", nargs="+", choices=[*SCENARIOS, "all"])
    ap.add_argument("--amqp-url")
    ap.add_argument("--port-base", type=int, help="bind ports from here up (default: any free)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=4000, help="events per HTTP single-event run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workers", type=int, help="RABBITMESH_WORKERS (default: rabbitmesh's)")
    ap.add_argument("--fanout", type=int, default=10)
    ap.add_argument("--triggers", type=int, default=1000)
    ap.add_argument(
        "--batch-factor", type=int, default=5, help="producers send this many times --n events"
    )
    ap.add_argument("--batch-concurrency", type=int, default=8)
    ap.add_argument("--amqp-window", type=int, default=1000, help="AMQP publishes in flight")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for deliveries")
    ap.add_argument(
        "--startup-timeout",
        type=float,
        default=600,
        help="seconds for rabbitmesh to get ready (1,000 triggers take minutes on a busy machine)",
    )
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
