"""Fuzzing budget and bookkeeping shared by every test in tests/fuzz.

Two hypothesis profiles, chosen with the environment variable HYPOTHESIS_PROFILE:

* ``ci`` (default): a few hundred inputs per test, the whole directory in well under a minute;
* ``deep``: tens of thousands of inputs per pure test, for a long run before a release.

Profiles are applied per test (``fuzz_settings(area)``), never loaded globally, so they do not
change the budgets of the property tests in tests/unit. Each test body is wrapped with
``counted`` and the terminal summary prints how many inputs each test tried (every call of the
body: generated examples, replays from the example database and shrinking steps).
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

#: max_examples per fuzzing area and profile.
BUDGETS: dict[str, dict[str, int]] = {
    "ci": {"codec": 300, "amqp": 300, "cesql": 300, "manifests": 200, "ingress": 150},
    "deep": {
        "codec": 20_000,
        "amqp": 20_000,
        "cesql": 20_000,
        "manifests": 20_000,
        "ingress": 2_000,
    },
}
if PROFILE not in BUDGETS:
    raise pytest.UsageError(f"HYPOTHESIS_PROFILE must be one of {sorted(BUDGETS)}, not {PROFILE!r}")

_COMMON = {
    # Time is bounded explicitly inside the tests (CPU time per input), not by hypothesis'
    # wall-clock deadline, which a busy 2-core machine would trip at random.
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
    # No "explain" phase: its tracing slows every failing run and would interleave with the
    # watchdog below.
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
}
settings.register_profile("ci", max_examples=300, **_COMMON)
settings.register_profile("deep", max_examples=20_000, **_COMMON)


def fuzz_settings(area: str, share: float = 1.0, light: bool = False, **overrides: Any) -> settings:
    """The settings of one fuzz test: the active profile with the area's explicit budget.

    `share`: the fraction of the budget one of several fuzzers in a test gets. `light`: half
    the budget in the ci profile (narrow tests of one aspect; deep runs them in full).
    """
    if light and PROFILE == "ci":
        share /= 2
    examples = max(1, round(BUDGETS[PROFILE][area] * share))
    return settings(settings.get_profile(PROFILE), max_examples=examples, **overrides)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Deep runs take minutes per test: lift the suite's per-test timeout for them."""
    if PROFILE == "deep":
        for item in items:
            if item.path.parent == Path(__file__).parent:
                item.add_marker(pytest.mark.timeout(4 * 3600))


# -- counting -------------------------------------------------------------------------------

_TRIED: dict[str, int] = {}
_SECONDS: dict[str, float] = {}
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def counted(fn: F | None = None, *, name: str | None = None) -> Any:
    """Count every call of a test body (place it under @given).

    `name` files the count under another test's name (a body nested in that test).
    """
    if fn is None:
        return functools.partial(counted, name=name)
    key = name or fn.__name__
    _TRIED.setdefault(key, 0)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            _TRIED[key] += 1
            return await fn(*args, **kwargs)

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _TRIED[key] += 1
        return fn(*args, **kwargs)

    return wrapper


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    start = time.monotonic()
    yield
    _SECONDS[item.name] = _SECONDS.get(item.name, 0.0) + time.monotonic() - start


def pytest_terminal_summary(terminalreporter: Any) -> None:
    ran = {name: n for name, n in _TRIED.items() if n}
    if not ran:
        return
    terminalreporter.section(f"fuzz inputs (profile {PROFILE})")
    total = 0
    for name, n in sorted(ran.items()):
        total += n
        terminalreporter.write_line(
            f"fuzz: {name} tried {n} inputs in {_SECONDS.get(name, 0.0):.1f}s"
        )
    terminalreporter.write_line(f"fuzz: total {total} inputs")
    report = os.environ.get("RABBITMESH_FUZZ_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            for name, n in sorted(ran.items()):
                f.write(f"{PROFILE}\t{name}\t{n}\t{_SECONDS.get(name, 0.0):.1f}\n")


# -- time bounds ----------------------------------------------------------------------------


class TooSlow(Exception):
    """Raised into code that ran past its CPU-time watchdog (a hang, not a mere slow input)."""


#: Times a body over its bound is measured before the bound fails it (`within_cpu`).
MEASUREMENTS = 3


@contextmanager
def _cpu_clock(what: str, watchdog: float) -> Iterator[list[float]]:
    """Yield a list that receives the CPU seconds this thread spent in the block.

    The garbage collector is paused so that a collection of hypothesis' own garbage is not
    billed to the code under test. A SIGVTALRM watchdog (process CPU time, so another
    process hogging the machine cannot trip it; not SIGALRM, which pytest-timeout owns)
    interrupts pure-Python loops after `watchdog` seconds so that a hang fails with its
    reproducing example instead of a suite timeout.
    """
    main = threading.current_thread() is threading.main_thread()
    previous: Any = None
    if main:

        def expire(signum: int, frame: Any) -> None:
            raise TooSlow(f"{what}: still running after {watchdog}s of CPU time")

        previous = signal.signal(signal.SIGVTALRM, expire)
        signal.setitimer(signal.ITIMER_VIRTUAL, watchdog)
    was_enabled = gc.isenabled()
    gc.disable()
    spent: list[float] = []
    start = time.thread_time()
    try:
        yield spent
    finally:
        spent.append(time.thread_time() - start)
        if was_enabled:
            gc.enable()
        if main:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.signal(signal.SIGVTALRM, previous)


def within_cpu(limit: float, what: str, body: Callable[[], T]) -> T:
    """`body()`, failing when it used more than `limit` seconds of this thread's CPU time in
    each of MEASUREMENTS runs.

    An input that makes the code under test slow (super-linear, a hang) is slow every time; a
    single run billed far more than its usual CPU is the machine's doing (seen once in a full
    run: 680 ms billed to a 21 ms YAML parse that hypothesis then replayed in time), so a run
    over the bound is measured again before it counts. `body` must be repeatable. What it
    raises is raised as it is, once its time is within the bound; an AssertionError (a wrong
    result) at once. The watchdog of each run is ten times the bound (5 s at least).
    """
    spent: list[float] = []
    for _ in range(MEASUREMENTS):
        error: Exception | None = None
        result: Any = None
        with _cpu_clock(what, max(5.0, limit * 10)) as clock:
            try:
                result = body()
            except (AssertionError, TooSlow):
                raise
            except Exception as e:
                error = e
        if clock[0] < limit:
            if error is not None:
                raise error
            return cast(T, result)
        spent.append(clock[0])
    ms = ", ".join(f"{s * 1000:.1f}" for s in spent)
    raise AssertionError(f"{what} took {ms} ms of CPU time (bound {limit * 1000:g} ms)")
