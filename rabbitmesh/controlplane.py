"""The control plane of one replica: the resource store -> the desired set -> the controller.

- At start: read the store stream up to now, apply the config dir to it, reconcile once;
  only then is the replica ready (/readyz).
- Then: every change read from the stream (written by this replica's API or config watcher,
  or by another replica) marks the desired set dirty; one loop reconciles it, debounced, never
  two at a time, and retries every few seconds after a failure.
- Read-after-write: a writer can wait until the reconcile that includes its record is done,
  so the API answers with the resource's status as this replica reconciled it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from rabbitmesh import metrics
from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.names import Names
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.controller import Controller
from rabbitmesh.reconciler.desired import Desired
from rabbitmesh.reconciler.known_types import known_types
from rabbitmesh.resources.base import Resource
from rabbitmesh.settings import Settings
from rabbitmesh.store.autocreate import AutoEventTypes
from rabbitmesh.store.configsync import ConfigSync
from rabbitmesh.store.state import Key
from rabbitmesh.store.stream import Store

log = logging.getLogger("rabbitmesh.controlplane")

#: How often failed reconciles are retried.
RESYNC_SECONDS = 5.0
#: Changes arriving within this long are reconciled together.
DEBOUNCE_SECONDS = 0.02


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
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.ctx = ctx
        self.controller = controller
        self.on_ready = on_ready
        self.store = Store(
            publisher,
            consumer,
            names.store_queue,
            max_bytes=settings.store_max_bytes,
            timeout=settings.publish_timeout + 5.0,
        )
        self.config = ConfigSync(self.store, settings.config_dir, names.check_length)
        self.desired = Desired()
        self.autotypes = (
            AutoEventTypes(
                self.store,
                self.resource,
                max_per_owner=settings.eventtype_auto_create_max_per_broker,
                per_minute=settings.eventtype_auto_create_per_minute,
            )
            if settings.eventtype_auto_create
            else None
        )
        self.ready = False  # the first reconcile succeeded
        self.started = False  # the store is read, the config dir applied, reconciled once
        self.last_ok = False
        self.reconciled_offset = -1
        self._dirty = asyncio.Event()
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
        return key in self.desired.derived_keys and self.store.get(key) is None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.config.initial()  # ManifestError here stops rabbitmesh: invalid config dir
        self.store.listeners.append(self._dirty.set)
        if self.autotypes is not None:
            self.store.listeners.append(self.autotypes.known.clear)
        await self.reconcile()
        self.started = True

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._reconcile_loop(stop), name="reconcile loop"),
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
        await self.store.stop()

    # --- reconciling -----------------------------------------------------------------------

    async def reconcile(self) -> bool:
        async with self._lock:
            offset = self.store.state.last_offset
            desired = self.desired.build(self.store.state.entries.values())
            metrics.set_known_types(known_types(desired, self._auto_keys()))
            self.ctx.history = self.desired.history
            ok = await self.controller.apply_all(desired)
            self.last_ok = ok
            if ok and not self.ready:
                self.ready = True
                log.info("reconciled %d resources", len(desired))
                self.on_ready()
            async with self._reconciled:
                self.reconciled_offset = max(self.reconciled_offset, offset)
                self._reconciled.notify_all()
            return ok

    def _auto_keys(self) -> set[Key]:
        """EventTypes auto-created from what senders sent (they label metrics last)."""
        return {e.key for e in self.store.state.entries.values() if e.origin == "auto"}

    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(None if self.last_ok else RESYNC_SECONDS):
                    await self._dirty.wait()
                await asyncio.sleep(DEBOUNCE_SECONDS)  # take a burst of changes in one go
            except TimeoutError:
                if not self.publisher.connected:
                    continue
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:  # never let the loop die; the next change or resync retries
                log.exception("reconcile failed")
                self.last_ok = False

    async def wait_reconciled(self, offset: int, timeout: float = 10.0) -> bool:
        """Wait until a reconcile including the record at `offset` finished here."""
        try:
            async with asyncio.timeout(timeout), self._reconciled:
                await self._reconciled.wait_for(lambda: self.reconciled_offset >= offset)
            return True
        except TimeoutError:
            return False
