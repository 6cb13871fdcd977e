"""JSONata's own test suite against Python JSONata libraries (docs/eventtransform.md).

    python -m venv /tmp/jv && /tmp/jv/bin/pip install jsonatapy jlens jsonata-python
    git clone https://github.com/jsonata-js/jsonata /tmp/jsonata-js
    /tmp/jv/bin/python benchmarks/jsonata_libraries.py /tmp/jsonata-js/test/test-suite \
        jsonatapy jlens jsonata-python

Each test group runs in its own subprocess, killed after 30 s (a case that hangs fails the
rest of its group). A case passes when the result equals the expected one (numbers to 1e-9),
when an undefined result was expected and none came, or when an expected error was raised.
Prints one line per library: cases passed, groups that hung, seconds spent evaluating.
"""

import glob
import json
import math
import os
import subprocess
import sys
import time

SUITE = sys.argv[1]


def load(case):
    if "data" in case:
        return case["data"]
    ds = case.get("dataset")
    if ds is None:
        return None
    with open(os.path.join(SUITE, "datasets", ds + ".json")) as f:
        return json.load(f)


def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def run(lib, case):
    data = load(case)
    b = case.get("bindings") or {}
    if lib == "jsonatapy":
        import jsonatapy

        return jsonatapy.compile(case["expr"]).evaluate(data, b or None, timeout=2000)
    if lib == "jsonata-python":
        import jsonata

        e = jsonata.Jsonata(case["expr"])
        for k, v in b.items():
            e.assign(k, v)
        return e.evaluate(data)
    if lib == "jlens":
        import jlens

        e = jlens.Expression(case["expr"])
        return e.evaluate(data, bindings=b) if b else e.evaluate(data)


def group(lib, gdir):
    ok = total = 0
    t = 0.0
    for path in sorted(glob.glob(os.path.join(gdir, "*.json"))):
        with open(path) as f:
            cases = json.load(f)
        for case in cases if isinstance(cases, list) else [cases]:
            total += 1
            t0 = time.perf_counter()
            try:
                r = run(lib, case)
                if "code" in case:
                    good = False
                elif case.get("undefinedResult"):
                    good = r is None
                elif "result" in case:
                    good = same(r, case["result"])
                else:
                    good = False
            except BaseException:
                good = "code" in case
            t += time.perf_counter() - t0
            ok += good
            print(json.dumps({"ok": ok, "total": total, "t": t}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        group(sys.argv[2], sys.argv[3])
        sys.exit(0)
    groups = sorted(glob.glob(os.path.join(SUITE, "groups", "*")))
    for lib in sys.argv[2:]:
        ok = total = 0
        hung = 0
        secs = 0.0
        for g in groups:
            n = len(glob.glob(os.path.join(g, "*.json")))
            try:
                p = subprocess.run(
                    [sys.executable, __file__, SUITE, lib, g],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                out = p.stdout
            except subprocess.TimeoutExpired as e:
                out = (
                    (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                )
                hung += 1
            lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            last = lines[-1] if lines else {"ok": 0, "total": 0, "t": 0}
            ok += last["ok"]
            secs += last["t"]
            total += max(n, last["total"])
        print(
            f"{lib}: {ok}/{total} cases pass ({100 * ok / total:.1f}%), "
            f"{hung} groups hung, {secs:.1f}s evaluating",
            flush=True,
        )
