"""The fault-injection harness: steady load with every event id recorded, sinks that count
the ids they acknowledged, and the report of what was accepted, delivered, lost, duplicated.

Used by tests/faults and benchmarks/soak.py. An event is *accepted* when ingress answered
202 (RabbitMQ confirmed it); it is *delivered* when a sink answered its POST with a 2xx. Lost =
accepted events a sink never acknowledged; duplicates = acknowledgements beyond the first
(at-least-once allows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

from tests.support.waiting import eventually

#: Where every scenario's report is appended as one JSON line (docs/reliability.md is made
#: from it).
REPORT_PATH = Path(os.environ.get("RABBITMESH_FAULT_REPORT", "/tmp/rabbitmesh-faults.jsonl"))
#: Events per second of the steady load.
RATE = float(os.environ.get("RABBITMESH_FAULT_RATE", "300"))

#: Statuses the load generator records besides HTTP codes.
NO_ANSWER = 0  # connection refused or reset
CLIENT_TIMEOUT = -1  # no answer within LoadGenerator.timeout: a hang


class LoadGenerator:
    """POSTs binary CloudEvents at a steady rate, round-robin over `urls`, and records the
    status of every id. Ids are `{tag}-{n}`; `type_of(n)` gives each event's type."""

    def __init__(
        self,
        urls: list[str] | str,
        *,
        rate: float = RATE,
        tag: str = "ev",
        type_of: Callable[[int], str] = lambda _n: "com.example.fault",
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        ssl: Any = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.rate = rate
        self.tag = tag
        self.type_of = type_of
        self.timeout = timeout
        self.extra_headers = headers or {}
        self.ssl = ssl
        self.statuses: dict[str, int] = {}
        self.latency: dict[str, float] = {}  # seconds to the answer, per id
        #: Why requests got no answer (NO_ANSWER): exception and message, counted.
        self.no_answer_reasons: Counter[str] = Counter()
        self.sent = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._paused = False

    async def start(self) -> LoadGenerator:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2000, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        started = time.monotonic()
        base = 0
        while True:
            # Ticks of 10 ms; catching up after a slow tick keeps the average rate steady.
            due = int((time.monotonic() - started) * self.rate) - base
            if self._paused:
                base += max(due, 0)
            else:
                for _ in range(max(due, 0)):
                    self._send(self.sent)
                    self.sent += 1
                    base += 1
            await asyncio.sleep(0.01)

    def _send(self, n: int) -> None:
        event_id = f"{self.tag}-{n}"
        url = self.urls[n % len(self.urls)]
        task = asyncio.create_task(self._one(event_id, url, n))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, event_id: str, url: str, n: int) -> None:
        assert self._session is not None
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-type": self.type_of(n),
            "ce-source": "tests/faults",
            "content-type": "application/json",
            **self.extra_headers,
        }
        started = time.monotonic()
        try:
            async with self._session.post(
                url, headers=headers, data=b'{"n":%d}' % n, ssl=self.ssl
            ) as r:
                await r.read()
                status = r.status
        except TimeoutError:
            status = CLIENT_TIMEOUT
        except (aiohttp.ClientError, OSError) as e:
            status = NO_ANSWER
            self.no_answer_reasons[f"{type(e).__name__}: {e}"[:160]] += 1
        self.statuses[event_id] = status
        self.latency[event_id] = time.monotonic() - started

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) sending without counting the pause as a backlog to catch up."""
        self._paused = paused

    async def stop(self) -> None:
        """Stop sending and wait for every request in flight to be answered."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._tasks:
            await asyncio.gather(*list(self._tasks))
        if self._session is not None:
            await self._session.close()

    def accepted(self) -> set[str]:
        return {i for i, s in self.statuses.items() if s == 202}

    def count(self, *statuses: int) -> int:
        return sum(1 for s in self.statuses.values() if s in statuses)

    def answered(self) -> int:
        return len(self.statuses)

    def acceptance(self, start: int, end: int) -> float:
        """The share of events `start` <= n < `end` (in sending order) answered 202, among
        those answered: compare a fault's phase with the phase before it, under the same load
        on the same machine, rather than with an absolute figure."""
        answered = [self.statuses.get(f"{self.tag}-{n}") for n in range(start, end)]
        statuses = [s for s in answered if s is not None]
        return sum(1 for s in statuses if s == 202) / len(statuses) if statuses else 0.0

    async def wait_answered(self, count: int, what: str, timeout: float = 30.0) -> None:
        """Wait until `count` more requests have an answer (of any kind)."""
        target = self.answered() + count
        await eventually(lambda: self.answered() >= target, timeout=timeout, what=what)

    async def wait_accepted(self, count: int, what: str, timeout: float = 30.0) -> None:
        """Wait until `count` more events were accepted (202)."""
        target = self.count(202) + count
        await eventually(lambda: self.count(202) >= target, timeout=timeout, what=what)


Mode = Literal["ok", "fail", "hang"]


class IdSink:
    """A subscriber that counts the ids it acknowledged (2xx), and can be down, fail or hang.

    Lean on purpose: a soak sends hundreds of thousands of events, so only ids are kept.
    """

    def __init__(self, name: str = "sink") -> None:
        self.name = name
        self.ok: Counter[str] = Counter()
        self.requests = 0
        self.mode: Mode = "ok"
        self.fail_status = 503
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._held: dict[int, web.Request] = {}  # by id(): requests are not hashable
        self.max_open_held = 0  # most held requests whose sender was still waiting at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def up(self) -> bool:
        return self._runner is not None

    async def start(self) -> IdSink:
        """Listen (again, on the same port after a `down()`)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def down(self) -> None:
        """Stop listening: connections are refused, as with a crashed subscriber."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def hang(self) -> None:
        """Accept requests and never answer them (until `release()`)."""
        self._release.clear()
        self.mode = "hang"

    def release(self, mode: Mode = "ok") -> None:
        """End a hang: held requests get a 503 (their sender gave up on them already)."""
        self.mode = mode
        self._release.set()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        if self.mode == "hang":
            self._held[id(request)] = request
            self.max_open_held = max(self.max_open_held, self.open_held())
            try:
                await self._release.wait()
            finally:
                self._held.pop(id(request), None)
            return web.Response(status=503)
        if self.mode == "fail":
            return web.Response(status=self.fail_status)
        event_id = request.headers.get("ce-id")
        if event_id is not None:
            self.ok[event_id] += 1
        return web.Response(status=200)

    def open_held(self) -> int:
        """Held requests whose connection is still open (the sender has not given up)."""
        return sum(
            1
            for r in self._held.values()
            if r.transport is not None and not r.transport.is_closing()
        )

    def delivered(self) -> set[str]:
        return set(self.ok)

    def missing(self, accepted: Iterable[str]) -> set[str]:
        return {i for i in accepted if i not in self.ok}


@dataclass
class FaultReport:
    scenario: str
    sent: int
    accepted: int
    refused: dict[str, int]  # status -> count, for every answer but 202
    expected: int  # deliveries owed: accepted events x sinks each must reach
    delivered: int  # of those, acknowledged by their sink
    lost: int
    duplicates: int
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        refused = " ".join(f"{k}:{v}" for k, v in sorted(self.refused.items())) or "-"
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"FAULT {self.scenario}: sent={self.sent} accepted={self.accepted} "
            f"refused=[{refused}] delivered={self.delivered}/{self.expected} lost={self.lost} "
            f"duplicates={self.duplicates} seconds={self.seconds:.1f}{extra}"
        )

    def save(self, path: Path = REPORT_PATH) -> None:
        record = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(self)}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def report(
    scenario: str,
    load: LoadGenerator,
    sinks: list[IdSink],
    started: float,
    **notes: Any,
) -> FaultReport:
    accepted = load.accepted()
    refused = Counter(str(s) for s in load.statuses.values() if s != 202)
    delivered = sum(len(accepted & s.delivered()) for s in sinks)
    duplicates = sum(c - 1 for s in sinks for i, c in s.ok.items() if i in accepted)
    # Refused (503, reset) events that still arrived: allowed (the client would retry them),
    # neither lost nor duplicated; shown so the figure is visible.
    unconfirmed = sum(len(s.delivered() - accepted) for s in sinks)
    if unconfirmed:
        notes = {"refused_but_delivered": unconfirmed, **notes}
    if load.no_answer_reasons:  # status 0: say what the client saw
        notes = {**notes, "no_answer": dict(load.no_answer_reasons.most_common(3))}
    expected = len(accepted) * len(sinks)
    return FaultReport(
        scenario=scenario,
        sent=load.sent,
        accepted=len(accepted),
        refused=dict(refused),
        expected=expected,
        delivered=delivered,
        lost=expected - delivered,
        duplicates=duplicates,
        seconds=time.monotonic() - started,
        notes=notes,
    )


async def settle(
    scenario: str,
    load: LoadGenerator,
    sinks: list[IdSink],
    started: float,
    timeout: float = 60.0,
    **notes: Any,
) -> FaultReport:
    """Stop the load, wait until every sink acknowledged every accepted event (or the
    deadline), print and save the report, and fail the test on any loss."""
    await load.stop()
    accepted = load.accepted()
    try:
        await eventually(
            lambda: all(not s.missing(accepted) for s in sinks),
            timeout=timeout,
            interval=0.2,
            what=f"{scenario}: all {len(accepted)} accepted events acknowledged by every sink",
        )
    finally:
        result = report(scenario, load, sinks, started, **notes)
        print("\n" + result.line())
        result.save()
    assert result.lost == 0, result.line()
    assert result.accepted > 0, f"{scenario}: nothing was accepted at all"
    return result


def assert_ingress_unaffected(
    load: LoadGenerator, result: FaultReport, fault: tuple[int, int]
) -> None:
    """A subscriber's fault must not push back on ingress: refusals are only 503s (with
    Retry-After: back-pressure a loaded machine may need), and the share accepted while the
    fault lasted (events `fault[0]` to `fault[1]`) is at least half of the share before it."""
    assert set(result.refused) <= {"503"}, result.line()
    before, during = load.acceptance(0, fault[0]), load.acceptance(*fault)
    assert during >= before / 2, (
        f"accepted {during:.0%} while the subscriber was faulty, {before:.0%} before: "
        + result.line()
    )


def vm_rss_kib(pid: int) -> int:
    """Resident set size of a process and its children (`rabbitmesh run`'s workers) in KiB,
    from /proc (no psutil)."""
    total, found, todo = 0, False, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    found = True
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(k) for k in (task / "children").read_text().split()]
        except OSError:  # exited meanwhile
            continue
    if not found:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return total


def markdown_table(path: Path = REPORT_PATH) -> str:
    """The last report of each scenario in `path`, as the table of docs/reliability.md."""
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["scenario"]] = record
    rows = [
        "| fault | sent | accepted | refused (status: count) | delivered | lost | duplicates "
        "| notes |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in latest.values():
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(r["refused"].items())) or "-"
        notes = ", ".join(f"{k} {v}" for k, v in r["notes"].items() if k != "rss_mib_by_minute")
        rows.append(
            f"| {r['scenario']} | {r['sent']} | {r['accepted']} | {refused} "
            f"| {r['delivered']}/{r['expected']} | {r['lost']} | {r['duplicates']} | {notes} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m tests.support.faults [REPORT.jsonl]
    import sys

    print(markdown_table(Path(sys.argv[1]) if len(sys.argv) > 1 else REPORT_PATH))
