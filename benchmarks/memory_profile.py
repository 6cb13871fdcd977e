"""Where a worker's memory per Trigger goes: tracemalloc and live objects at two sizes.

    python benchmarks/memory_profile.py [--triggers 1000 2000] [--top 25] [--frames 1]
        [--port-base P]

For each size, a fresh Python process starts one rabbitmesh Server (one worker, as each of
`rabbitmesh run`'s workers is) with a Broker and that many Triggers in its config dir (each
with its own `type` filter, as benchmarks/control_plane_bench.py makes them), against the
RabbitMQ at RABBITMESH_AMQP_URL, under tracemalloc. Once /readyz answers it collects garbage
and records traced bytes (current and peak), RSS, live objects by type (every generation,
also what `gc.freeze` hid) and a tracemalloc snapshot. Then the sizes are compared: bytes
and objects per Trigger, by source line (or `--frames` deep tracebacks) and by type.
Each run uses a fresh topology prefix, deleted at the end.
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


async def one(n: int, port: int, prefix: str, out: Path, frames: int) -> None:
    """In this process: a Server with `n` Triggers; its figures and snapshot into `out`."""
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
    gc.unfreeze()  # count what tune_gc froze too
    gc.collect()
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.take_snapshot().dump(str(out) + ".snap")
    out.write_text(  # noqa: ASYNC240 - once, at the end
        json.dumps(
            {
                "triggers": n,
                "ready_s": round(ready_s, 1),
                "rss_kib": rss_kib(),
                "traced": current,
                "traced_peak": peak,
                "objects": sum(types.values()),
                "types": dict(types),
            }
        )
    )
    server._stop.set()
    await asyncio.wait_for(task, 120)


def compare(a: Path, b: Path, top: int, key: str) -> None:
    fa, fb = json.loads(a.read_text()), json.loads(b.read_text())
    dn = fb["triggers"] - fa["triggers"]
    print(f"sizes {fa['triggers']} -> {fb['triggers']} Triggers (ready in {fa['ready_s']} s, "
          f"{fb['ready_s']} s)")  # fmt: skip
    for name in ("rss_kib", "traced", "traced_peak", "objects"):
        per = (fb[name] - fa[name]) / dn
        unit = "KiB" if name == "rss_kib" else ("B" if name.startswith("traced") else "")
        print(f"  {name}: {fa[name]:,} -> {fb[name]:,}: {per:,.1f} {unit} per Trigger")
    print(f"\nlive objects per Trigger by type (top {top}):")
    diff = Counter(fb["types"])
    diff.subtract(fa["types"])
    for name, count in diff.most_common(top):
        print(f"  {count / dn:8.2f}  {name}")
    sa = tracemalloc.Snapshot.load(str(a) + ".snap")
    sb = tracemalloc.Snapshot.load(str(b) + ".snap")
    if key == "traceback":  # by the innermost rabbitmesh line that allocated, through libraries
        print(f"\ntraced bytes per Trigger by the rabbitmesh line that allocated (top {top}):")
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
    print(f"\ntraced bytes per Trigger by {key} (top {top}):")
    total = 0
    for st in stats[:top]:
        total += st.size_diff
        where = "\n            ".join(str(f) for f in st.traceback.format()[-2 * 6 :])
        print(f"  {st.size_diff / dn:8.0f} B {st.count_diff / dn:6.2f} blocks  {where}")
    print(f"  (top {top}: {total / dn:,.0f} B of {(fb['traced'] - fa['traced']) / dn:,.0f} B)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, nargs=2, default=[1000, 2000])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1, help="traceback depth (1: by line)")
    ap.add_argument("--port-base", type=int, help="bind ports from here up (default: any free)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        tracemalloc.start(a.frames)
        try:
            import uvloop

            uvloop.install()  # as `rabbitmesh run` does
        except ImportError:
            pass
        asyncio.run(one(a.one, a.port, a.prefix, a.out, a.frames))
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
            subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--port", str(ports()),
                 "--prefix", prefix, "--out", str(out), "--frames", str(a.frames)],
                check=True,
            )  # fmt: skip
            outs.append(out)
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
