"""Where a worker's memory per Trigger goes: tracemalloc and live objects at two sizes.

    python benchmarks/memory_profile.py [--triggers 1000 2000] [--top 25] [--frames 1]
        [--port-base P]
    python benchmarks/memory_profile.py --writes 300 --triggers 500 [--watch-history N]
        [--top 25] [--frames 25]

For each size, a fresh Python process starts one rabbitmesh Server (one worker, as each of
`rabbitmesh run`'s workers is) with a Broker and that many Triggers in its config dir (each
with its own `type` filter, as benchmarks/control_plane_bench.py makes them), against the
RabbitMQ at RABBITMESH_AMQP_URL, under tracemalloc. Once /readyz answers it collects garbage
and records traced bytes (current and peak), RSS, live objects by type (every generation,
also what `gc.freeze` hid) and a tracemalloc snapshot. Then the sizes are compared: bytes
and objects per Trigger, by source line (or `--frames` deep tracebacks) and by type.
Each run uses a fresh topology prefix, deleted at the end.

With `--writes W`, one process with the first `--triggers` size measures what a write leaves
behind instead: W writes through the admin API (create, update, delete in turn, as
benchmarks/control_plane_bench.py's further writes), a first point, 2W more, a second point;
figures per write. At both points CPython's type attribute cache is cleared first: pamqp
names every frame field it codes with a new string that the cache keeps (4,096 slots, so
bounded) and would otherwise look like ~120 B per write. The watch history keeps the last
HISTORY events by design (~800 B each, one per write here until it is full):
`--watch-history 1` leaves it out. Measured with 200 Triggers, `--writes 600 --watch-history
1 --frames 8` (uvloop, as `rabbitmesh run`): -8 B and +0.1 objects per write; before
rabbitmesh/amqp/channels.py, +283 B and +3.8 objects per write, all under
dispatch/worker.py's channel close (aio-pika's observer per closed channel, issue 13).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SINK = "http://127.0.0.1:9/unused"


def manifests(n: int) -> str:
    docs = ["apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n"]
    for i in range(n):
        docs.append(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
            f"metadata: {{name: p{i}}}\n"
            f"spec: {{broker: b, filter: {{attributes: {{type: p{i}}}}}, "
            f"subscriber: {{uri: '{SINK}p'}}}}\n"
        )
    return "---\n".join(docs)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"


async def write(session: Any, api: str, k: int) -> None:
    """The k-th of a run of writes: create, update, delete in turn (one name per three)."""
    name, step = f"w{k // 3}", k % 3
    url = api + TRIGGERS

    def doc(type_: str) -> dict[str, Any]:
        spec = {"broker": "b", "filter": {"attributes": {"type": type_}}}
        spec["subscriber"] = {"uri": SINK}
        return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                "metadata": {"name": name, "namespace": "default"}, "spec": spec}  # fmt: skip

    if step == 0:
        request = session.post(url, json=doc(f"w{k}"))
    elif step == 1:
        request = session.put(f"{url}/{name}", json=doc(f"w{k}-2"))
    else:
        request = session.delete(f"{url}/{name}")
    async with request as r:
        if r.status >= 300:
            raise SystemExit(f"write {k}: {r.status} {await r.text()}")


def point(out: Path, **figures: Any) -> None:
    """Live objects by type, traced bytes, RSS and a snapshot, after a full collection. The
    peak is reset after the snapshot (a deep one takes far more than the process itself);
    RSS keeps it: with --writes, the second point's RSS includes the first snapshot, so
    only traced bytes and objects say what the writes left."""
    gc.unfreeze()  # count what tune_gc froze too
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()  # before the census below
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    figures.update(
        rss_kib=rss_kib(), traced=current, traced_peak=peak, objects=sum(types.values()),
        types=dict(types),
    )  # fmt: skip
    tracemalloc.take_snapshot().dump(str(out) + ".snap")
    tracemalloc.reset_peak()
    out.write_text(json.dumps(figures))


async def one(
    n: int, port: int, prefix: str, out: Path, writes: int = 0, history: int | None = None
) -> None:
    """In this process: a Server with `n` Triggers; its figures and snapshot into `out`
    (with `writes`: into `out` and `out`.2, before and after 2 * `writes` writes)."""
    import aiohttp

    from rabbitmesh.server import Server
    from rabbitmesh.settings import Settings

    config = Path(tempfile.mkdtemp(prefix="memprof-"))
    (config / "triggers.yaml").write_text(manifests(n))
    settings = Settings(
        amqp_url=benchlib.amqp_url(),
        http_host="127.0.0.1",
        http_port=port,
        config_dir=config,
        topology_prefix=prefix,
        workers=1,
        log_level="warning",
    )
    server = Server(settings)
    task = asyncio.create_task(server.run_forever())
    started = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        while True:
            if task.done():
                task.result()
                raise SystemExit("rabbitmesh stopped before it was ready")
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    ready_s = time.perf_counter() - started
    await asyncio.sleep(1.0)  # not synchronisation: let the loop settle after ready
    if not writes:
        point(out, count=n, unit="Trigger", ready_s=round(ready_s, 1))
    else:
        from rabbitmesh.watch import WatchLog

        if history is not None and server.plane is not None:
            server.plane.watch = WatchLog(history=history)
        api = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for k in range(writes):  # first-use allocations, caches, resizes
                await write(s, api, k)
            sys._clear_type_cache()
            point(out, count=0, unit="write", ready_s=round(ready_s, 1))
            for k in range(writes, 3 * writes):
                await write(s, api, k)
            sys._clear_type_cache()
            point(Path(str(out) + ".2"), count=2 * writes, unit="write", ready_s=0)
    server._stop.set()
    await asyncio.wait_for(task, 120)


def compare(a: Path, b: Path, top: int, key: str) -> None:
    fa, fb = json.loads(a.read_text()), json.loads(b.read_text())
    dn, each = fb["count"] - fa["count"], fb["unit"]
    if each == "Trigger":
        print(f"sizes {fa['count']} -> {fb['count']} Triggers (ready in {fa['ready_s']} s, "
              f"{fb['ready_s']} s)")  # fmt: skip
    else:
        print(f"{dn} writes after the first point (ready in {fa['ready_s']} s)")
    for name in ("rss_kib", "traced", "traced_peak", "objects"):
        per = (fb[name] - fa[name]) / dn
        unit = "KiB" if name == "rss_kib" else ("B" if name.startswith("traced") else "")
        print(f"  {name}: {fa[name]:,} -> {fb[name]:,}: {per:,.1f} {unit} per {each}")
    print(f"\nlive objects per {each} by type (top {top}):")
    diff = Counter(fb["types"])
    diff.subtract(fa["types"])
    for name, count in diff.most_common(top):
        print(f"  {count / dn:8.2f}  {name}")
    sa = tracemalloc.Snapshot.load(str(a) + ".snap")
    sb = tracemalloc.Snapshot.load(str(b) + ".snap")
    if key == "traceback":  # by the innermost rabbitmesh line that allocated, through libraries
        print(f"\ntraced bytes per {each} by the rabbitmesh line that allocated (top {top}):")
        by: Counter[str] = Counter()
        for snap, sign in ((sb, 1), (sa, -1)):
            for st in snap.statistics("traceback"):
                ours = [f for f in st.traceback if "/rabbitmesh/" in f.filename]
                where = "(none)"
                if ours:
                    where = f"{ours[-1].filename.split('/rabbitmesh/')[-1]}:{ours[-1].lineno}"
                by[where] += sign * st.size
        for where, size in by.most_common(top):
            print(f"  {size / dn:8.0f} B  {where}")
    stats = sb.compare_to(sa, key)
    print(f"\ntraced bytes per {each} by {key} (top {top}):")
    total = 0
    for st in stats[:top]:
        total += st.size_diff
        where = "\n            ".join(str(f) for f in st.traceback.format()[-2 * 6 :])
        print(f"  {st.size_diff / dn:8.0f} B {st.count_diff / dn:6.2f} blocks  {where}")
    print(f"  (top {top}: {total / dn:,.0f} B of {(fb['traced'] - fa['traced']) / dn:,.0f} B)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1, help="traceback depth (1: by line)")
    ap.add_argument(
        "--writes", type=int, default=0, help="per write instead: W writes, then 2W measured"
    )
    ap.add_argument("--watch-history", type=int, help="with --writes: the watch history kept")
    ap.add_argument("--port-base", type=int, help="bind ports from here up (default: any free)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is None and len(a.triggers) != (1 if a.writes else 2):
        ap.error("--triggers: two sizes, or one with --writes")
    if a.one is not None:
        tracemalloc.start(a.frames)
        try:
            import uvloop

            uvloop.install()  # as `rabbitmesh run` does
        except ImportError:
            pass
        asyncio.run(one(a.one, a.port, a.prefix, a.out, a.writes, a.watch_history))
        return
    ports = benchlib.Ports(a.port_base)
    work = Path(tempfile.mkdtemp(prefix="memprof-"))
    prefixes: list[str] = []
    outs = []
    try:
        for n in a.triggers:
            prefix = f"memprof-{uuid.uuid4().hex[:8]}"
            prefixes.append(prefix)
            out = work / f"{n}.json"
            more = ["--writes", str(a.writes)] if a.writes else []
            if a.writes and a.watch_history is not None:
                more += ["--watch-history", str(a.watch_history)]
            subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--port", str(ports()),
                 "--prefix", prefix, "--out", str(out), "--frames", str(a.frames), *more],
                check=True,
            )  # fmt: skip
            outs.append(out)
        if a.writes:
            outs.append(Path(str(outs[0]) + ".2"))
        compare(outs[0], outs[1], a.top, "lineno" if a.frames == 1 else "traceback")
    finally:
        names = benchlib.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name").split()
        exchanges = benchlib.rabbitmqctl(
            "list_exchanges", "-q", "--no-table-headers", "name"
        ).split()
        mine = tuple(p + "." for p in prefixes)
        asyncio.run(
            benchlib.delete_all(
                benchlib.amqp_url(),
                [q for q in names if q.startswith(mine)],
                [x for x in exchanges if x.startswith(mine)],
            )
        )
        print(f"(snapshots in {work})", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
