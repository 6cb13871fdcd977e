"""The control plane of one replica: the resource store -> the desired set -> the controller.

- At start: read the store stream up to now, apply the config dir to it, reconcile
  everything once; only then is the replica ready (/readyz).
- Then, as Knative's controllers do, a keyed work queue: every record read from the stream
  (written by this replica's API or config watcher, or by another replica) names the keys it
  changed; the desired set takes in those keys only, and the queue gets the keys whose desired
  resource changed plus their dependents (a Broker's Triggers, a Channel's Subscriptions, a
  Secret's users: rabbitmesh/store/dependencies.py). Keys queued twice collapse; one loop
  takes everything queued as a batch, so no key is reconciled twice at once; the controller
  runs a batch with bounded concurrency (RABBITMESH_RECONCILE_CONCURRENCY).
- A key whose reconcile failed is queued again after a backoff (0.5 s doubling to 30 s).
- Every RABBITMESH_RESYNC_INTERVAL, and after a RabbitMQ connection came back, every key is
  queued again, a slice per batch, to repair drift (a queue deleted by hand, a reconnect).
- Read-after-write: a writer can wait until the batch that includes its record is done, so
  the API answers with the resource's status as this replica reconciled it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from rabbitmesh import metrics
from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.names import Names
from rabbitmesh.config.checks import ManifestChecks
from rabbitmesh.config.knative import Parsed, changed_namespaces, parsed
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.controller import Controller, order
from rabbitmesh.reconciler.known_types import known_types
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.core import ConfigMap
from rabbitmesh.settings import Settings
from rabbitmesh.store.autocreate import AutoEventTypes
from rabbitmesh.store.configsync import ConfigSync
from rabbitmesh.store.desired import Desired
from rabbitmesh.store.manifests import render
from rabbitmesh.store.state import Key
from rabbitmesh.store.stream import Store, StoreUnavailable
from rabbitmesh.watch import WatchLog
from rabbitmesh.workers import Siblings

log = logging.getLogger("rabbitmesh.controlplane")

#: First and longest wait before a failed key is reconciled again.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
#: Keys of a resync taken into one batch (the rest wait for the next): a write queued behind
#: a resync of thousands of resources waits for a slice of it, not for all of it. 200 made
#: writes during a resync at 5,000 Triggers wait up to ~0.7 s (p99 of the creations 110 ms);
#: 50 gave 0.44 s and 58 ms (docs/benchmarks.md, "Runs S and P").
RESYNC_SLICE = 50
#: How often a write checks whether the other workers reconciled it.
SIBLING_POLL = 0.002
#: How often a starting worker checks whether the first one applied the config dir.
CONFIG_WRITER_POLL = 0.02


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        names: Names,
        publisher: AmqpClient,
        consumer: AmqpClient,
        ctx: Context,
        controller: Controller,
        on_ready: Callable[[], None],
        siblings: Siblings | None = None,
        on_features: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.settings = settings
        #: After every batch: apply the config-features flags that switch a whole subsystem
        #: (authentication-oidc); True when one changed, and every resource is reconciled
        #: again (what they send, their audiences, the policies' status).
        self.on_features = on_features
        self.publisher = publisher
        self.consumer = consumer
        self.ctx = ctx
        self.controller = controller
        self.on_ready = on_ready
        #: The other workers of this `rabbitmesh run` (rabbitmesh/workers.py), if any.
        self.siblings = siblings
        self.store = Store(
            publisher,
            consumer,
            names.store_queue,
            max_bytes=settings.store_max_bytes,
            timeout=settings.publish_timeout + 5.0,
        )
        self.config = ConfigSync(self.store, settings.config_dir, ManifestChecks(names))
        self.desired = Desired()
        self.ctx.history = self.desired.history
        # Always there: config-features' eventtype-auto-create switches it while running.
        self.autotypes: AutoEventTypes | None = AutoEventTypes(
            self.store,
            self.resource,
            max_per_owner=settings.eventtype_auto_create_max_per_broker,
            per_minute=settings.eventtype_auto_create_per_minute,
        )
        #: Whether ingress notes event types now (RABBITMESH_EVENTTYPE_AUTO_CREATE, then
        #: config-features' eventtype-auto-create; updated after every batch).
        self.autotypes_enabled = settings.eventtype_auto_create
        self.ready = False  # a full reconcile succeeded
        self.started = False  # the store is read, the config dir applied, reconciled once
        self.reconciled_offset = -1
        #: key -> (rank, the event types it names) for the metric label set.
        self._types: dict[Key, tuple[int, list[str]]] = {}
        #: The same types by rank (Triggers, other kinds, EventTypes, auto EventTypes).
        self._ranked: list[dict[Key, list[str]]] = [{}, {}, {}, {}]
        #: What `?watch=true` streams (rabbitmesh/watch.py).
        self.watch = WatchLog()
        ctx.on_status = self.status_changed
        #: Store keys changed since the desired set last took them in.
        self._changed: set[Key] = set()
        #: Keys to reconcile in the next batch.
        self._queued: set[Key] = set()
        #: Keys of a resync not yet taken (a slice per batch).
        self._resync: list[Key] = []
        #: key -> failed attempts in a row; those keys wait for their retry timer.
        self._failures: dict[Key, int] = {}
        self._retry_timers: dict[Key, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reconciled = asyncio.Condition()

    # --- reading ---------------------------------------------------------------------------

    def resource(self, kind: str, namespace: str, name: str) -> Resource | None:
        """A resource as this replica last reconciled it (with its status)."""
        return self.ctx.get(kind, namespace, name)

    def resources(self) -> list[Resource]:
        return list(self.ctx.resources.values())

    def is_derived(self, key: Key) -> bool:
        """Made by rabbitmesh itself (a namespace's default broker, a source's EventType)."""
        return self.desired.is_derived(key) and self.store.get(key) is None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        if self.siblings is not None and self.siblings.config_writer_pending():
            # Another worker of this run is writing the config dir: wait, read what it
            # wrote, and find nothing left to write (rabbitmesh/workers.py).
            while self.siblings.config_writer_pending():  # noqa: ASYNC110 - another process
                await asyncio.sleep(CONFIG_WRITER_POLL)
            await self.store.sync()
        await self.config.initial()  # ManifestError here stops rabbitmesh: invalid config dir
        if self.siblings is not None and self.siblings.index == 0:
            self.siblings.mark_config_applied()
        self.store.listeners.append(self._on_store_change)
        if self.autotypes is not None:
            self.store.listeners.append(self.autotypes.known.clear)
        for client in (self.publisher, self.consumer):
            if client.connection is not None:
                client.connection.reconnect_callbacks.add(self._on_reconnect)
        self.store.state.changed.clear()
        self._changed = set(self.store.state.entries)
        await self._batch(full=True)
        self.started = True

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._loop(stop), name="reconcile loop"),
            asyncio.create_task(self.config.run(stop), name="config dir watch"),
        ]
        if self.autotypes is not None:
            tasks.append(asyncio.create_task(self.autotypes.run(stop), name="eventtype auto"))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def stop(self) -> None:
        for timer in self._retry_timers.values():
            timer.cancel()
        await self.store.stop()

    # --- the work queue ----------------------------------------------------------------------

    def _on_store_change(self) -> None:
        state = self.store.state
        self._changed |= state.changed
        state.changed.clear()
        self._wake.set()

    def _on_reconnect(self, *_: object) -> None:
        # Topology is declared without aio-pika's robust re-declaration (it grew memory): a
        # reconnect reconciles everything again instead.
        self.resync()

    def status_changed(self, key: Key) -> None:
        """A status changed outside a reconcile (a Replay's progress): watchers get it as a
        MODIFIED event at the version reconciled so far (no store write happened)."""
        res = self.ctx.resources.get(key)
        if res is not None:
            self.watch.record(self.reconciled_offset, key, render(res))

    def resync(self) -> None:
        """Queue every resource again (a slice per batch)."""
        current = self.desired.current
        self._resync = sorted(current, key=lambda k: order(current[k]))
        self._wake.set()

    def enqueue(self, keys: set[Key]) -> None:
        self._queued |= keys
        self._wake.set()

    async def _loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.resync_interval
        next_resync = asyncio.get_running_loop().time() + interval if interval > 0 else None
        while not stop.is_set():
            timeout = None
            if next_resync is not None:
                timeout = max(0.0, next_resync - asyncio.get_running_loop().time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if next_resync is not None and asyncio.get_running_loop().time() >= next_resync:
                self.resync()
                next_resync = asyncio.get_running_loop().time() + interval
            self._wake.clear()
            try:
                await self._batch()
            except Exception:  # never let the loop die; retries and resyncs repair
                log.exception("reconcile failed")
                await asyncio.sleep(RETRY_FIRST)
            if self._resync:
                self._wake.set()  # the next slice

    async def _batch(self, full: bool = False) -> bool:
        """Take in the store's changes and reconcile what they affect, plus what is queued."""
        async with self._lock:
            offset = self.store.state.last_offset
            changed_keys, self._changed = self._changed, set()
            before = {k: self.desired.current.get(k) for k in changed_keys if k[0] == "ConfigMap"}
            changed = self.desired.update(self.store.state.entries, changed_keys)
            if changed:
                self._update_known_types(changed)
            work = changed | self._queued
            self._queued = set()
            for key in changed:
                work |= self._affected(key, before.get(key))
            if self._resync:
                work.update(self._resync[:RESYNC_SLICE])
                del self._resync[:RESYNC_SLICE]
            if full:
                work |= set(self.desired.current)
            for key in work:  # a key reconciled now needs no pending retry
                timer = self._retry_timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
            try:
                failed = await self._reconcile(work, changed)
            except BaseException:
                self._queued |= work  # not lost: the next batch takes them again
                raise
            self._schedule_retries(work, failed)
            for key in work | changed:
                res = self.ctx.resources.get(key)
                self.watch.record(offset, key, render(res) if res is not None else None)
            self.autotypes_enabled = self.ctx.effective().enabled("eventtype-auto-create")
            if self.on_features is not None and await self.on_features():
                self.resync()
            # A broker whose own RabbitMQ (RabbitmqBrokerConfig) is away is not Ready and
            # retried; it does not keep this replica, and every other resource, unready.
            ok = not (self._failures.keys() - self.controller.external_failures)
            if ok and not self.ready:
                self.ready = True
                log.info("reconciled %d resources", len(self.desired.current))
                self.on_ready()
            async with self._reconciled:
                self.reconciled_offset = max(self.reconciled_offset, offset)
                self._reconciled.notify_all()
            if self.siblings is not None:
                self.siblings.mark(offset=self.reconciled_offset)
            return ok

    def _affected(self, key: Key, old: Resource | None) -> set[Key]:
        """What a change of `key` makes to reconcile: its dependents (configuration: further,
        rabbitmesh/store/dependencies.py); a defaults ConfigMap's only in the namespaces
        whose defaults it changed."""
        out = self.desired.dependencies.affected(key)
        if key[0] != "ConfigMap" or not out:
            return out
        new = self.desired.current.get(key)
        namespaces = changed_namespaces(
            _parsed_or_none(old),
            _parsed_or_none(new),
        )
        if namespaces is None:
            return out
        return {k for k in out if k[1] in namespaces}

    async def _reconcile(self, work: set[Key], changed: set[Key]) -> set[Key]:
        ctx, current = self.ctx, self.desired.current
        gone: list[Resource] = []
        for key in changed:
            res, old = current.get(key), ctx.resources.get(key)
            if res is None:
                if old is not None:
                    gone.append(old)
                continue
            if old is not None and old is not res:
                res.status = old.status  # keep transition times across re-applies
            ctx.resources[key] = res
        if gone:
            # Deleted resources stay visible (GET, ingress) until their topology is gone, as
            # Kubernetes shows an object until its finalizers ran; then what reads them sees
            # them gone (a Trigger of a deleted Broker: BrokerDoesNotExist).
            finalize = await self._still_gone(gone) if self.started else gone
            await self.controller.apply([], finalize)
            for res in gone:
                ctx.resources.pop(res.key, None)
        present = [ctx.resources[k] for k in work if k in ctx.resources]
        before = {r.key: r.status.ready for r in present}
        failed = await self.controller.apply(present, [])
        # A resource whose readiness flipped may change what its dependents report.
        flipped = {
            r.key for r in present if r.status.ready != before[r.key] and r.key not in failed
        }
        for key in flipped:
            dependents = self.desired.dependencies.dependents(key) - work
            if dependents:
                self.enqueue(dependents)
        return failed

    async def _still_gone(self, gone: list[Resource]) -> list[Resource]:
        """Of `gone`, those not created again since: a replica that is behind must not
        delete the queue (and the events in it) that another replica already made for a
        new resource of the same name. Reading the stream up to its head first makes the
        window where that can still happen the time of one queue.delete (docs/control-plane.md,
        "Deleting and re-creating a name")."""
        try:
            await self.store.sync()
        except StoreUnavailable:
            return gone  # RabbitMQ is away: deleting later would not be safer
        back = [r for r in gone if self.store.get(r.key) is not None]
        back_keys = {r.key for r in back}
        for res in back:
            log.info(
                "%s %s/%s was created again before this replica deleted it: its queue stays",
                res.KIND,
                res.namespace,
                res.name,
            )
        return [r for r in gone if r.key not in back_keys]

    def _schedule_retries(self, work: set[Key], failed: set[Key]) -> None:
        loop = asyncio.get_running_loop()
        for key in work - failed:
            self._failures.pop(key, None)
        for key in failed:
            attempts = self._failures.get(key, 0) + 1
            self._failures[key] = attempts
            delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
            self._retry_timers[key] = loop.call_later(delay, self._retry, key)
        for key in list(self._failures):
            if key not in self.desired.current:
                self._failures.pop(key, None)  # deleted meanwhile: nothing to retry

    def _retry(self, key: Key) -> None:
        self._retry_timers.pop(key, None)
        if self.publisher.connected:
            self.enqueue({key})
        else:  # RabbitMQ is away: the reconnect resyncs everything; try again later anyway
            self._retry_timers[key] = asyncio.get_running_loop().call_later(
                RETRY_MAX, self._retry, key
            )

    async def reconcile(self) -> bool:
        """Reconcile everything changed so far, now; True when nothing is failing."""
        return await self._batch()

    def _update_known_types(self, changed: set[Key]) -> None:
        """The metric label set (rabbitmesh/reconciler/known_types.py), kept per resource and
        per rank so a write costs its own resource's types and the first MAX_EVENT_TYPES
        kept, not every Trigger's filter again (at 5,000 Triggers, walking them all was a
        tenth of a write's CPU)."""
        for key in changed:
            res = self.desired.current.get(key)
            types: list[str] = []
            rank = 0
            if res is not None:
                entry = self.store.get(key)
                auto = entry is not None and entry.origin == "auto"
                rank = (
                    0
                    if res.KIND == "Trigger"
                    else (3 if auto else 2)
                    if res.KIND == "EventType"
                    else 1
                )
                types = list(known_types([res], {key} if auto else ()))
            old = self._types.get(key)
            if old is not None and (old[0] != rank or not types):
                del self._ranked[old[0]][key]
            if types:
                self._types[key] = (rank, types)
                self._ranked[rank][key] = types  # an update keeps its place in the rank
            else:
                self._types.pop(key, None)
        # Lazily, most important first: set_known_types stops at MAX_EVENT_TYPES.
        metrics.set_known_types(
            t for by_key in self._ranked for types in by_key.values() for t in types
        )

    async def wait_reconciled(self, offset: int, timeout: float = 10.0) -> bool:
        """Wait until a reconcile including the record at `offset` finished here, and on
        every other ready worker of this `rabbitmesh run`: the next request, whichever
        worker the kernel hands it to, sees what the write made."""
        try:
            async with asyncio.timeout(timeout):
                async with self._reconciled:
                    await self._reconciled.wait_for(lambda: self.reconciled_offset >= offset)
                if self.siblings is not None:
                    # Another process: no condition to wait on; its slot is polled, briefly
                    # (a write is a rare, slow operation next to one millisecond).
                    while self.siblings.behind(offset):  # noqa: ASYNC110 - another process
                        await asyncio.sleep(SIBLING_POLL)
            return True
        except TimeoutError:
            return False


def _parsed_or_none(res: Resource | None) -> Parsed | None:
    if not isinstance(res, ConfigMap):
        return None
    try:
        return parsed(res)
    except FieldError:  # stored by an older version that read it differently
        return None
