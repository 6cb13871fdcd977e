"""Changes to the whole RabbitMQ node (stop_app, resource alarms) that are always undone.

Tests marked `disruptive` stop the node or raise an alarm on it: every other user of that
node sees it. Each change goes through `disrupt()`, which writes how to undo it to a file
before making it, and removes the entry once undone (in a `finally`). A run killed where no
`finally` runs (SIGKILL, a CI timeout) leaves the entry behind; `restore_interrupted()`, called
by tests/conftest.py when a session starts and ends, undoes it, so RabbitMQ is never left down
or alarmed by a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from tests.support.rabbit import RABBITMQ_NODE, rabbitmqctl

#: Undo actions of disruptions in progress, as {"pid": ..., "undo": [rabbitmqctl args]}.
PENDING = Path(
    os.environ.get(
        "RABBITMESH_TEST_DISRUPTION_FILE",
        f"/tmp/rabbitmesh-test-disruptions-{RABBITMQ_NODE or 'default'}.json",
    )
)


@contextlib.contextmanager
def _pending() -> Iterator[list[dict]]:
    """The pending entries, read and written back under a lock (sessions may overlap)."""
    PENDING.touch()
    with PENDING.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        try:
            entries = json.loads(text) if text.strip() else []
        except ValueError:
            entries = []
        yield entries
        f.seek(0)
        f.truncate()
        f.write(json.dumps(entries))


def _run_undo(args: Sequence[str]) -> None:
    rabbitmqctl("-q", *args, timeout=120)
    if args[0] == "start_app":
        rabbitmqctl("-q", "await_startup", timeout=120)


class Disruption:
    """One change to the node; `undo()` puts it back (once, however often it is called)."""

    def __init__(self, undo: Sequence[str]) -> None:
        self.args = list(undo)
        self.entry = {"pid": os.getpid(), "undo": self.args}
        self.done = False

    def undo(self) -> None:
        if self.done:
            return
        _run_undo(self.args)
        self.done = True
        with _pending() as entries:
            if self.entry in entries:
                entries.remove(self.entry)


def disrupt(do: Sequence[str], undo: Sequence[str]) -> Disruption:
    """Run `rabbitmqctl do`, recording `rabbitmqctl undo` first. Undo it with the result's
    `undo()` in a `finally`."""
    disruption = Disruption(undo)
    with _pending() as entries:
        entries.append(disruption.entry)
    try:
        rabbitmqctl("-q", *do, timeout=120)
    except BaseException:
        disruption.undo()
        raise
    return disruption


@contextlib.asynccontextmanager
async def node_stopped() -> AsyncIterator[None]:
    """`rabbitmqctl stop_app` for the body of the `async with`; `start_app` whatever happens."""
    disruption = await asyncio.to_thread(disrupt, ["stop_app"], ["start_app"])
    try:
        yield
    finally:
        await asyncio.to_thread(disruption.undo)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def restore_interrupted() -> list[list[str]]:
    """Undo what disruptive tests of this session, or of a run that died, left behind (not
    what a live session is in the middle of). Returns the undo actions run."""
    if not PENDING.exists():
        return []
    ran: list[list[str]] = []
    with _pending() as entries:
        for entry in list(entries):
            pid = entry.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
                continue  # another session is still running it, and will undo it
            try:
                _run_undo(entry["undo"])
            except Exception:
                continue  # kept: the next session tries again
            ran.append(entry["undo"])
            entries.remove(entry)
    return ran
