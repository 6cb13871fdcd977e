"""Keep every CPU busy, to run the test suite the way a loaded CI machine runs it.

    python benchmarks/cpu_burner.py &          # one busy process per CPU (or --procs N)
    BURNER=$!
    export RABBITMESH_TEST_BUSY_MACHINE=1      # tests/faults/README.md: one figure's bound
    for i in $(seq 10); do ./dev.sh test || break; done   # the whole run, as CI makes it
    kill $BURNER                               # ends the burner and its workers

The suite must pass ten times in a row this way (issue 21): tests wait for conditions and
compare against baselines they measure themselves, never against absolute timings. The
burner runs at the normal priority on purpose (`--nice 10` to be kinder to a shared machine);
it stops by itself after `--minutes` (default 120).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time


def burn(until: float, nice: int) -> None:
    os.nice(nice)
    x = 0
    while time.monotonic() < until:
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args()
    until = time.monotonic() + args.minutes * 60
    workers = [
        multiprocessing.Process(target=burn, args=(until, args.nice), daemon=True)
        for _ in range(args.procs)
    ]
    for w in workers:
        w.start()

    def stop(*_: object) -> None:
        for w in workers:
            w.terminate()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"cpu_burner: {args.procs} busy processes for {args.minutes:g} min", flush=True)
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
