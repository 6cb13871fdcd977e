"""This replica's running sources: start, restart and stop each one as the reconciler asks.

The reconciler turns each source into a `Plan` (what to run, and a fingerprint of everything
it depends on: spec, resolved sink, secret values). `run(plan)` starts it, or does nothing
when the fingerprint did not change (the controller reconciles every resource on every
change); a changed fingerprint stops the old runtime and starts the new one. `remove(key)`
stops it for good and, on the replica that led it, runs its clean-up (a GitLab hook to
delete). Plans run under a lease (rabbitmesh/sources/leader.py), so one replica runs each.

Stopping never blocks the reconcile loop: it happens in the background (a ContainerSource's
processes get their grace period), and `stop()` waits for all of it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rabbitmesh.amqp.names import Names
from rabbitmesh.settings import Settings
from rabbitmesh.sources.leader import Elector, Lease

log = logging.getLogger("rabbitmesh.sources")

Key = tuple[str, str, str]
#: A Ready=False reason and message a running source reports (None: all is well).
Problem = tuple[str, str] | None

#: AMQP queue names are at most 255 bytes.
MAX_QUEUE_NAME = 255
#: How long a departing source's clean-up (e.g. deleting a GitLab hook) may take.
CLEANUP_TIMEOUT = 30.0


@dataclass
class Runtime:
    """What a running source gets: shared clients, settings, and a way to report."""

    key: Key
    what: str  # "PingSource default/tick", for logs
    settings: Settings
    names: Names
    session: aiohttp.ClientSession
    elector: Elector
    report: Callable[[Problem], None]
    #: Tells the manager that `status` changed.
    changed: Callable[[], None]
    #: Status fields the runtime learnt (a GitLab hook's id), merged into `status`.
    status: dict[str, Any] = field(default_factory=dict)

    def queue(self, suffix: str) -> str:
        """A per-source AMQP queue name: `{prefix}.source.{kind}.{ns}.{name}:{suffix}`."""
        kind, ns, name = self.key
        return source_queue(self.names, kind, ns, name, suffix)


def source_queue(names: Names, kind: str, namespace: str, name: str, suffix: str) -> str:
    text = f"{names.prefix}.source.{kind.lower()}.{namespace}.{name}:{suffix}"
    if len(text.encode()) <= MAX_QUEUE_NAME:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: MAX_QUEUE_NAME - 18 - len(suffix)]}~{digest}:{suffix}"


@dataclass
class Plan:
    """What to run for one source."""

    key: Key
    what: str
    #: Everything the runtime depends on; a change restarts it.
    fingerprint: Any
    #: Runs while this replica holds the source's lease, until cancelled.
    work: Callable[[Runtime], Awaitable[None]]
    #: Runs once on the replica that led the source, after it was deleted.
    on_delete: Callable[[Runtime], Awaitable[None]] | None = None


@dataclass
class _Running:
    plan: Plan
    runtime: Runtime
    lease: Lease
    task: asyncio.Task[None]


class SourceManager:
    def __init__(
        self,
        settings: Settings,
        names: Names,
        session: aiohttp.ClientSession,
        amqp_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.names = names
        self.session = session
        self.elector = Elector(settings.amqp_url, amqp_ssl)
        self._running: dict[Key, _Running] = {}
        self._problems: dict[Key, Problem] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        #: Called with a key when its runtime reported a change (problem, leadership, status).
        self.on_change: Callable[[Key], None] | None = None

    def start(self) -> None:
        self.elector.start()

    # --- what the reconciler asks ------------------------------------------------------------

    def run(self, plan: Plan) -> None:
        """Make `plan` the running one for its key (a no-op when nothing changed)."""
        current = self._running.get(plan.key)
        if current is not None and current.plan.fingerprint == plan.fingerprint:
            return
        if current is not None:
            log.info("%s changed; restarting it", plan.what)
            self._retire(current, deleted=False)
        self._problems.pop(plan.key, None)
        runtime = Runtime(
            key=plan.key,
            what=plan.what,
            settings=self.settings,
            names=self.names,
            session=self.session,
            elector=self.elector,
            report=functools.partial(self._report, plan.key),
            changed=functools.partial(self._changed, plan.key),
        )
        lease = Lease(self.elector, runtime.queue("lease"), plan.what)
        lease.on_change = lambda _leading, key=plan.key: self._changed(key)
        task = asyncio.create_task(
            lease.hold(lambda: plan.work(runtime)), name=f"{plan.what} (lease)"
        )
        self._running[plan.key] = _Running(plan, runtime, lease, task)

    def remove(self, key: Key, *, deleted: bool = True) -> None:
        """Stop `key`'s runtime; with `deleted`, also clean up after it where it led."""
        self._problems.pop(key, None)
        current = self._running.pop(key, None)
        if current is not None:
            self._retire(current, deleted=deleted)

    def problem(self, key: Key) -> Problem:
        return self._problems.get(key)

    def status(self, key: Key) -> dict[str, Any]:
        current = self._running.get(key)
        return dict(current.runtime.status) if current is not None else {}

    def leading(self, key: Key) -> bool:
        current = self._running.get(key)
        return current is not None and current.lease.leading

    # --- internals ---------------------------------------------------------------------------

    def _report(self, key: Key, problem: Problem) -> None:
        if key not in self._running or self._problems.get(key) == problem:
            return
        if problem is None:
            self._problems.pop(key, None)
        else:
            self._problems[key] = problem
        self._changed(key)

    def _changed(self, key: Key) -> None:
        if self.on_change is not None and key in self._running:
            self.on_change(key)

    def _retire(self, running: _Running, *, deleted: bool) -> None:
        was_leading = running.lease.leading
        task = asyncio.create_task(self._stop_one(running, deleted and was_leading))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_one(self, running: _Running, clean_up: bool) -> None:
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        if clean_up and running.plan.on_delete is not None:
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await running.plan.on_delete(running.runtime)
            except Exception as e:
                log.warning("%s: clean-up after deletion failed: %s", running.plan.what, e)

    async def stop(self) -> None:
        """Stop every source (shutdown): their work ends, their leases pass to other replicas."""
        for key in list(self._running):
            self.remove(key, deleted=False)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        await self.elector.stop()
