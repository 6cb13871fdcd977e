"""The control plane at scale (issue 13): writes, apply, cold start, RSS, events, watch.

    python benchmarks/control_plane_bench.py [--triggers 5000] [--further-writes 10000]
        [--rate 200] [--skip-apply] [--skip-cold-start] [--skip-replicas]
        [--preload [--creates 300]] [--set RABBITMESH_NAME=VALUE ...]

Against the RabbitMQ at RABBITMESH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
with real `rabbitmesh run` processes and a real HTTP sink, each run under its own topology
prefix (deleted at the end). It measures, in order:

1. `--triggers` Triggers on one Broker, each with its own `type` filter, created one at a
   time through the admin API: median and p99 write latency over all writes and over the
   last 10% ("at the end"), and the total time;
2. meanwhile, a steady `--rate` events/s to a Trigger that exists throughout: accepted,
   delivered, lost, and p99 of publish -> delivery;
3. RSS of the process and its workers (summed, each, and PSS) with them all, then across
   `--further-writes` writes (create, update, delete in turn): samples (flat = max/min);
4. the same number of Triggers in one file with `rabbitmesh apply -f`: total time;
5. a cold start of a fresh process (fresh prefix) with that file in its config dir, once the
   earlier parts' queues and exchanges are deleted (a first start, alone on RabbitMQ): time
   until /readyz answers 200; then a restart of it (its queues exist by then); the time a
   SIGTERM takes to stop the first process (all Triggers) and the cold one (`stop_s`);
6. two replicas: a write on one, seen on the other's `?watch=true` stream: p50 / p99.

Prints one line per figure and a JSON object of them all at the end. The figures to reach
are in docs/benchmarks.md; run on a quiet machine (everything here shares its cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AMQP_URL = os.environ.get("RABBITMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
BROKER_DOC = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n"


#: Where ports come from (`--port-base`: a shared machine's assigned range).
free_port = benchlib.Ports()


def rss_mib(pid: int) -> float:
    """RSS of `rabbitmesh run` and its workers (one per core by default), summed."""
    return benchlib.rss_kib(pid) / 1024


def pss_mib(pid: int) -> float:
    """Proportional set size of the process tree: pages the forked workers still share with
    the supervisor are counted once, where summed RSS counts them in every process."""
    return round(sum(each["pss"] for each in smaps_each_mib(pid)), 1)


def smaps_each_mib(pid: int) -> list[dict[str, float]]:
    """Per process (supervisor first): PSS, and USS (its private pages: what stopping it
    would free), from /proc/PID/smaps_rollup."""
    out = []
    for p in benchlib.process_tree(pid):
        got = {"pss": 0.0, "uss": 0.0}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name == "Pss":
                    got["pss"] += int(rest.split()[0]) / 1024
                elif name in ("Private_Clean", "Private_Dirty"):
                    got["uss"] += int(rest.split()[0]) / 1024
        out.append({k: round(v, 1) for k, v in got.items()})
    return out


def cpu_each_s(pid: int) -> list[float]:
    """CPU seconds (user + system) of the supervisor and of each worker, in that order."""
    return [round(benchlib.cpu_seconds_one(p), 1) for p in benchlib.process_tree(pid)]


def broker_cpu_s(pid: int | None) -> float:
    return benchlib.cpu_seconds_one(pid) if pid is not None else float("nan")


def rss_each_mib(pid: int) -> list[float]:
    """RSS of the supervisor and of each worker, in that order."""
    return [round(benchlib.rss_kib_one(p) / 1024, 1) for p in benchlib.process_tree(pid)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def trigger_doc(name: str, sink: str, type_: str) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "broker": "b",
            "filter": {"attributes": {"type": type_}},
            "subscriber": {"uri": sink},
        },
    }


def trigger_yaml(name: str, sink: str, type_: str) -> str:
    return (
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{broker: b, filter: {{attributes: {{type: {type_}}}}}, "
        f"subscriber: {{uri: '{sink}'}}}}\n"
    )


#: RABBITMESH_* settings every rabbitmesh of the run gets (`--set NAME=VALUE`).
EXTRA_SETTINGS: dict[str, str] = {}


class Mesh:
    """One `rabbitmesh run` process."""

    def __init__(self, config: Path, prefix: str, log: Path, workers: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMESH_")},
            "RABBITMESH_AMQP_URL": AMQP_URL,
            "RABBITMESH_HTTP_HOST": "127.0.0.1",
            "RABBITMESH_HTTP_PORT": str(self.port),
            "RABBITMESH_CONFIG_DIR": str(config),
            "RABBITMESH_TOPOLOGY_PREFIX": prefix,
            "RABBITMESH_LOG_LEVEL": "warning",
        }
        if workers:
            self.env["RABBITMESH_WORKERS"] = str(workers)
        self.env.update(EXTRA_SETTINGS)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 1800.0) -> float:
        """Start; the seconds until /readyz answered 200."""
        started = time.perf_counter()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (a start, not a wait)
                [sys.executable, "-m", "rabbitmesh", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        async with aiohttp.ClientSession() as s:
            while time.perf_counter() - started < timeout:
                if self.proc.poll() is not None:
                    raise SystemExit(f"rabbitmesh exited early; see {self.log}")
                try:
                    async with s.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return time.perf_counter() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise SystemExit(f"not ready within {timeout}s; see {self.log}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds used so far by the process and its workers (those running)."""
        return round(benchlib.cpu_seconds(self.pid), 1)

    def stop(self) -> float | None:
        """SIGTERM, then wait (SIGKILL after 120 s); seconds to exit, None if it was killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        started = time.perf_counter()
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        return round(time.perf_counter() - started, 1)


class Sink:
    """Records when each event arrived; the event's data carries when it was sent."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ids: set[str] = set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()

    async def wait_for(self, ids: set[str], timeout: float) -> None:
        """Until every id in `ids` arrived, or `timeout` seconds."""
        deadline = time.perf_counter() + timeout
        while not ids <= self.ids:
            self.arrived.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                return

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict) and "sent" in body:
            self.latencies.append(time.time() - body["sent"])
            self.ids.add(request.headers.get("ce-id", ""))
            self.arrived.set()
        return web.Response(status=202)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def steady_flow(
    session: aiohttp.ClientSession, url: str, rate: float, stop: asyncio.Event
) -> tuple[set[str], int]:
    """`rate` events/s until `stop`; (accepted ids, refused count). A rate of 0 sends none."""
    accepted: set[str] = set()
    refused = 0
    if rate <= 0:
        await stop.wait()
        return accepted, refused
    interval = 1.0 / rate
    next_at = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal refused
        id_ = uuid.uuid4().hex
        headers = {
            "ce-specversion": "1.0",
            "ce-id": id_,
            "ce-type": "steady",
            "ce-source": "bench",
            "content-type": "application/json",
        }
        try:
            async with session.post(
                url, data=json.dumps({"sent": time.time()}), headers=headers
            ) as r:
                if r.status == 202:
                    accepted.add(id_)
                else:
                    refused += 1
        except (aiohttp.ClientError, TimeoutError):  # a timeout is a refusal too, not a crash
            refused += 1

    while not stop.is_set():
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    if pending:
        await asyncio.wait(pending)
    return accepted, refused


async def create_one_by_one(
    session: aiohttp.ClientSession, api: str, n: int, sink: str
) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        async with session.post(api + TRIGGERS, json=trigger_doc(f"t{i}", sink, f"ty{i}")) as r:
            if r.status != 201:
                raise SystemExit(f"create t{i}: {r.status} {await r.text()}")
        latencies.append(time.perf_counter() - t0)
        if (i + 1) % max(1, n // 10) == 0:
            print(f"  created {i + 1}/{n}", file=sys.stderr)
    return latencies, time.perf_counter() - started


async def further_writes(
    session: aiohttp.ClientSession, api: str, pid: int, count: int, sink: str
) -> list[float]:
    """create / update / delete in turn; RSS sampled 10 times along the way."""
    samples = [rss_mib(pid)]
    for k in range(count):
        name, step = f"w{k // 3}", k % 3
        url = api + TRIGGERS
        if step == 0:
            request = session.post(url, json=trigger_doc(name, sink, f"w{k}"))
        elif step == 1:
            request = session.put(f"{url}/{name}", json=trigger_doc(name, sink, f"w{k}-2"))
        else:
            request = session.delete(f"{url}/{name}")
        async with request as r:
            if r.status >= 300:
                raise SystemExit(f"write {k}: {r.status} {await r.text()}")
        if (k + 1) % max(1, count // 10) == 0:
            samples.append(rss_mib(pid))
    return samples


async def watch_latency(
    session: aiohttp.ClientSession, writer: str, watcher: str, rounds: int, sink: str
) -> list[float]:
    async with session.get(watcher + TRIGGERS) as r:
        version = (await r.json())["metadata"]["resourceVersion"]
    seen: dict[str, float] = {}
    arrived: dict[str, asyncio.Event] = {}
    url = f"{watcher}{TRIGGERS}?watch=true&resourceVersion={version}"
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as stream:

        async def read() -> None:
            async for line in stream.content:
                event = json.loads(line)
                name = event["object"]["metadata"]["name"]
                if event["type"] == "ADDED" and name not in seen:
                    seen[name] = time.perf_counter()
                    arrived.setdefault(name, asyncio.Event()).set()

        reader = asyncio.create_task(read())
        latencies = []
        for i in range(rounds):
            name = f"watch{i}"
            t0 = time.perf_counter()
            async with session.post(writer + TRIGGERS, json=trigger_doc(name, sink, name)) as r:
                assert r.status == 201, await r.text()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.setdefault(name, asyncio.Event()).wait(), 30)
            latencies.append(seen.get(name, float("inf")) - t0)
        reader.cancel()
    return latencies


def children_cpu_s() -> float:
    """CPU seconds of this script's finished child processes (the `rabbitmesh apply` CLI)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def store_records(prefix: str) -> int | None:
    """Messages (records) in the run's resource store stream, as RabbitMQ counts them."""
    try:
        out = benchlib.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages")
    except Exception:
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == f"{prefix}.store":
            return int(parts[1])
    return None


def names_of(what: str, prefixes: list[str]) -> list[str]:
    """Queues or exchanges of these prefixes (rabbitmqctl: no management plugin needed)."""
    out = benchlib.rabbitmqctl(f"list_{what}", "-q", "--no-table-headers", "name").split()
    return [n for n in out if n.startswith(tuple(p + "." for p in prefixes))]


async def cleanup(prefixes: list[str]) -> None:
    queues = await asyncio.to_thread(names_of, "queues", prefixes)
    exchanges = await asyncio.to_thread(names_of, "exchanges", prefixes)
    await benchlib.delete_all(AMQP_URL, queues, exchanges)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    n = args.triggers
    work = Path(tempfile.mkdtemp(prefix="cpbench-"))
    prefixes: list[str] = []
    results: dict[str, Any] = {"triggers": n}
    sink = Sink()
    await sink.start()
    meshes: list[Mesh] = []
    try:
        prefix = f"cpbench-{uuid.uuid4().hex[:8]}"
        prefixes.append(prefix)
        config = work / "config"
        config.mkdir()
        steady = trigger_yaml("steady", sink.url, "steady")
        (config / "base.yaml").write_text(BROKER_DOC + "---\n" + steady)
        creates = n
        if args.preload:
            # The N Triggers come from the config dir (a cold start with them), and the
            # one-at-a-time writes are `--creates` more on top: the write latency and the
            # events during writes at that size, without N sequential writes first.
            (config / "preload.yaml").write_text(
                "---\n".join(trigger_yaml(f"p{i}", sink.url + "p", f"p{i}") for i in range(n))
            )
            creates = args.creates
            results.update(preloaded=n, creates=creates)
        mesh = Mesh(config, prefix, work / "mesh.log", args.workers)
        meshes.append(mesh)
        rabbit = benchlib.rabbitmq_pid()
        rabbit_cpu = broker_cpu_s(rabbit)
        ready_s = await mesh.start()
        if args.preload:
            results["cold_start_ready_s"] = round(ready_s, 1)
            results["cold_start_cpu_s"] = mesh.cpu()
            results["cold_start_cpu_each_s"] = cpu_each_s(mesh.pid)
            results["cold_start_rabbitmq_cpu_s"] = round(broker_cpu_s(rabbit) - rabbit_cpu, 1)
            results["rss_cold_each_mib"] = rss_each_mib(mesh.pid)
            print(json.dumps(results), file=sys.stderr)
        results["rss_start_mib"] = round(rss_mib(mesh.pid), 1)
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            flow = asyncio.create_task(
                steady_flow(session, f"{mesh.url}/default/b", args.rate, stop)
            )
            cpu0 = mesh.cpu()
            latencies, total = await create_one_by_one(session, mesh.url, creates, sink.url + "t")
            stop.set()
            accepted, refused = await flow
            await sink.wait_for(accepted, 60)
            tail = latencies[-max(1, creates // 10) :]
            if latencies:
                results.update(
                    create_total_s=round(total, 1),
                    create_cpu_s=round(mesh.cpu() - cpu0, 1),
                    create_median_ms=round(statistics.median(latencies) * 1000, 1),
                    create_p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
                    create_median_last10pct_ms=round(statistics.median(tail) * 1000, 1),
                    create_p99_last10pct_ms=round(percentile(tail, 0.99) * 1000, 1),
                    create_max_ms=round(max(latencies) * 1000, 1),
                )
            results.update(
                steady_accepted=len(accepted),
                steady_refused=refused,
                steady_lost=len(accepted - sink.ids),
                steady_p99_ms=round(percentile(sink.latencies, 0.99) * 1000, 1),
                steady_p50_ms=round(percentile(sink.latencies, 0.5) * 1000, 1),
                rss_with_triggers_mib=round(rss_mib(mesh.pid), 1),
                rss_with_triggers_each_mib=rss_each_mib(mesh.pid),
                pss_with_triggers_mib=pss_mib(mesh.pid),
                smaps_with_triggers_each_mib=smaps_each_mib(mesh.pid),
            )
            print(json.dumps(results), file=sys.stderr)
            if args.further_writes:
                writes_t0 = time.perf_counter()
                samples = await further_writes(
                    session, mesh.url, mesh.pid, args.further_writes, sink.url + "w"
                )
                write_s = round(time.perf_counter() - writes_t0, 1)
                results.update(
                    further_writes_s=write_s,
                    pss_after_writes_mib=pss_mib(mesh.pid),
                    rss_after_writes_each_mib=rss_each_mib(mesh.pid),
                    smaps_after_writes_each_mib=smaps_each_mib(mesh.pid),
                    further_writes=args.further_writes,
                    rss_samples_mib=[round(x, 1) for x in samples],
                    rss_flatness=round(max(samples) / min(samples), 3),
                )
            if not args.skip_apply:
                manifest = work / "apply.yaml"
                manifest.write_text(
                    "---\n".join(trigger_yaml(f"a{i}", sink.url + "a", f"a{i}") for i in range(n))
                )
                env = {**os.environ, "RABBITMESH_SERVER": mesh.url}
                cpu0, cli0 = mesh.cpu(), children_cpu_s()
                rabbit_cpu = broker_cpu_s(rabbit)
                t0 = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "rabbitmesh", "apply", "-f", str(manifest),
                    env=env, cwd=ROOT,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await proc.communicate()
                results["apply_s"] = round(time.perf_counter() - t0, 1)
                results["apply_cpu_s"] = round(mesh.cpu() - cpu0, 1)
                results["apply_cli_cpu_s"] = round(children_cpu_s() - cli0, 1)
                results["apply_rabbitmq_cpu_s"] = round(broker_cpu_s(rabbit) - rabbit_cpu, 1)
                if proc.returncode != 0:
                    results["apply_error"] = err.decode()[-500:]
            if not args.skip_replicas:
                second = Mesh(config, prefix, work / "mesh2.log", args.workers)
                meshes.append(second)
                results["replica_store_records"] = store_records(prefix)
                results["replica_start_s"] = round(await second.start(), 1)
                results["replica_start_cpu_s"] = second.cpu()
                lat = await watch_latency(session, mesh.url, second.url, 50, sink.url + "x")
                results.update(
                    watch_p50_ms=round(percentile(lat, 0.5) * 1000, 1),
                    watch_p99_ms=round(percentile(lat, 0.99) * 1000, 1),
                )
        # The first replica holds every Trigger: how long a SIGTERM takes to finish at that size.
        results["stop_s"] = meshes[0].stop()
        for m in meshes:
            m.stop()
        meshes.clear()
        if not args.skip_cold_start and not args.preload:
            # The cold start is measured on a RabbitMQ without the first replica's queues: a
            # deployment's first start, not one beside another 10,000 queues this script
            # left (run F's 50.9 s was measured beside them; a cold start alone then took
            # 35 s on the same code). Deleting them takes ~30 s; it is not part of a figure.
            await cleanup(prefixes)
            prefixes.clear()
            cold = f"cpbench-{uuid.uuid4().hex[:8]}"
            prefixes.append(cold)
            cold_config = work / "cold"
            cold_config.mkdir()
            (cold_config / "base.yaml").write_text(BROKER_DOC)
            (cold_config / "triggers.yaml").write_text(
                "---\n".join(trigger_yaml(f"c{i}", sink.url + "c", f"c{i}") for i in range(n))
            )
            mesh = Mesh(cold_config, cold, work / "cold.log", args.workers)
            meshes.append(mesh)
            rabbit_cpu = broker_cpu_s(rabbit)
            results["cold_start_ready_s"] = round(await mesh.start(), 1)
            results["cold_start_cpu_s"] = mesh.cpu()
            results["cold_start_cpu_each_s"] = cpu_each_s(mesh.pid)
            results["cold_start_rabbitmq_cpu_s"] = round(broker_cpu_s(rabbit) - rabbit_cpu, 1)
            results["rss_cold_mib"] = round(rss_mib(mesh.pid), 1)
            results["rss_cold_each_mib"] = rss_each_mib(mesh.pid)
            results["pss_cold_mib"] = pss_mib(mesh.pid)
            # A restart of the same rabbitmesh (same prefix and config dir): its queues exist,
            # so RabbitMQ only confirms them, as after a deploy or a crash.
            results["cold_stop_s"] = mesh.stop()
            meshes.remove(mesh)
            mesh = Mesh(cold_config, cold, work / "restart.log", args.workers)
            meshes.append(mesh)
            rabbit_cpu = broker_cpu_s(rabbit)
            results["restart_ready_s"] = round(await mesh.start(), 1)
            results["restart_cpu_s"] = mesh.cpu()
            results["restart_rabbitmq_cpu_s"] = round(broker_cpu_s(rabbit) - rabbit_cpu, 1)
    finally:
        # What was measured before a failure is still worth having (a part that fails late,
        # such as the second replica's start, would otherwise lose every earlier figure).
        print("figures so far: " + json.dumps(results), file=sys.stderr)
        for m in meshes:
            m.stop()
        await sink.stop()
        await cleanup(prefixes)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=5000)
    parser.add_argument("--further-writes", type=int, default=10_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="events/s to a Trigger that exists throughout the creations (0: none)",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="start with the --triggers in the config dir (that start is the cold start), "
        "then create --creates more one at a time",
    )
    parser.add_argument("--creates", type=int, default=300, help="with --preload")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="RABBITMESH_NAME=VALUE",
        help="a setting for every rabbitmesh the run starts (repeatable), "
        "e.g. --set RABBITMESH_RESYNC_INTERVAL=15",
    )
    parser.add_argument("--skip-apply", action="store_true")
    parser.add_argument("--skip-cold-start", action="store_true")
    parser.add_argument("--skip-replicas", action="store_true")
    parser.add_argument("--port-base", type=int, help="bind ports from here up (default: any free)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="RABBITMESH_WORKERS of every rabbitmesh process (default: its own, one per core)",
    )
    parsed = parser.parse_args()
    for item in parsed.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("RABBITMESH_"):
            parser.error(f"--set {item!r}: expected RABBITMESH_NAME=VALUE")
        EXTRA_SETTINGS[name] = value
    free_port = benchlib.Ports(parsed.port_base)
    figures = asyncio.run(main(parsed))
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(json.dumps(figures))
