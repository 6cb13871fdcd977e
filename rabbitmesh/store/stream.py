"""The resource store on RabbitMQ: one durable stream, `{prefix}.store`, of records.

Every replica consumes the stream from its first offset and then follows it, applying each
record to a `StoreState` in stream order, so all replicas hold the same resources. A write is
a publish with a publisher confirm; the writer then waits until its own record came back
through the stream, so a write is visible on the writing replica when it returns, and its
outcome (created, conflict, ...) is the one every replica computes.

Retention: a snapshot record (the whole state) is written every `SNAPSHOT_RECORDS` records
(or, past that many resources, every as many records as there are resources) or once a
quarter of `max_bytes` was written since the last one; the stream keeps at most
`max_bytes` in segments of an eighth of that, so RabbitMQ only drops segments older than the
latest snapshot (docs/control-plane.md explains the arithmetic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from rabbitmesh.amqp.client import AmqpClient, PublishFailed
from rabbitmesh.amqp.streams import not_consumable_yet, wait_consumable
from rabbitmesh.store.state import Entry, Key, Outcome, StoreState
from rabbitmesh.timestamps import now_rfc3339

log = logging.getLogger("rabbitmesh.store")

SNAPSHOT_RECORDS = 1000
#: Unacked records the store consumer may hold (a stream consumer needs a prefetch).
PREFETCH = 1000
#: Stream segments are at most this part of the whole stream (and at least 64 KiB).
SEGMENTS = 8
#: How long start-up waits for a stream just declared to be consumable. While a RabbitMQ 3.10
#: cluster forms, consuming a stream declared a moment before can fail with `stream_not_found`
#: (404): a replica of the HA compose file used to exit on it once.
STREAM_READY_SECONDS = 60.0


class StoreUnavailable(Exception):
    """RabbitMQ did not take the record, or it did not come back in time."""


class Store:
    def __init__(
        self,
        publisher: AmqpClient,
        consumer: AmqpClient,
        queue: str,
        *,
        max_bytes: int,
        timeout: float,
    ) -> None:
        self.publisher = publisher
        self.consumer = consumer
        self.queue = queue
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.state = StoreState()
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        #: Called (synchronously) after every record that changed the state.
        self.listeners: list[Callable[[], None]] = []
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._snapshotting = False
        #: Records taken from the stream so far (re-reads included): the reader's progress.
        self.records_read = 0

    # --- lifecycle -------------------------------------------------------------------------

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "stream",
            "x-max-length-bytes": self.max_bytes,
            "x-stream-max-segment-size-bytes": max(self.max_bytes // SEGMENTS, 64 * 1024),
        }

    async def declare(self) -> None:
        """Declare the stream; one made earlier with other limits is used as it is."""
        ch = await self.publisher.channel()
        try:
            await ch.declare_queue(self.queue, durable=True, arguments=self.arguments())
        except aio_pika.exceptions.ChannelPreconditionFailed as e:
            log.warning(
                "resource store %s exists with other arguments (%s); using it as it is "
                "(change its limits with a RabbitMQ policy)",
                self.queue,
                e,
            )
        finally:
            with contextlib.suppress(Exception):
                await ch.close()

    async def start(self) -> None:
        """Declare, read the stream up to now, and keep following it."""
        await self.declare()
        await wait_consumable(self.consumer, self.queue)  # RabbitMQ 3.10: see there
        self._reader = asyncio.create_task(self._read(), name="store reader")
        await self._follow()
        await self.sync()
        log.info(
            "resource store %s read up to offset %d: %d resources",
            self.queue,
            self.state.last_offset,
            len(self.state.entries),
        )

    async def _follow(self) -> None:
        """Consume the stream from its first offset; retried while RabbitMQ says it is not
        consumable yet (streams.not_consumable_yet), for STREAM_READY_SECONDS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_READY_SECONDS
        delay = 0.2
        while True:
            channel = await self.consumer.channel(prefetch=PREFETCH)
            try:
                # Passive: when the connection comes back, aio-pika re-declares it as it was.
                queue = await channel.get_queue(self.queue, ensure=True)
                # After a reconnect the consumer starts again from the first offset: records
                # already applied are skipped by offset.
                await queue.consume(self._on_message, arguments={"x-stream-offset": "first"})
            except aio_pika.exceptions.AMQPError as e:
                with contextlib.suppress(Exception):
                    await channel.close()
                if not not_consumable_yet(e) or loop.time() + delay > deadline:
                    raise
                log.info("resource store %s not consumable yet (%s); retrying", self.queue, e)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            self._channel, self._queue = channel, queue
            return

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(StoreUnavailable("rabbitmesh is stopping"))

    # --- reading -----------------------------------------------------------------------------

    async def _on_message(self, msg: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(msg)  # in delivery order; one reader applies them in turn

    async def _read(self) -> None:
        unacked: AbstractIncomingMessage | None = None
        count = 0
        while True:
            msg = await self._inbox.get()
            try:
                self._process(msg)
            except Exception:  # a record we cannot read must not stop the store
                log.exception("resource store: unreadable record skipped")
            unacked, count = msg, count + 1
            if self._inbox.empty() or count >= PREFETCH // 2:
                with contextlib.suppress(Exception):  # the channel may be gone; re-read later
                    await unacked.ack(multiple=True)
                unacked, count = None, 0

    def _process(self, msg: AbstractIncomingMessage) -> None:
        self.records_read += 1
        offset = (msg.headers or {}).get("x-stream-offset")
        if not isinstance(offset, int):
            log.warning("resource store: record without x-stream-offset skipped")
            return
        if offset <= self.state.last_offset:
            return  # read again after a reconnect: already applied (not worth decoding)
        if msg.type == "snapshot" and self.state.based:
            # A reader that holds the whole state has no use for a snapshot's entries (see
            # StoreState.apply): only its offset counts. Decoding one of 5,000 Triggers
            # built ~13 MiB of objects in every worker, only to drop them: a transient peak
            # that left each worker's RSS ~5-10 MiB higher per snapshot (issue 13).
            record: dict[str, Any] = {"op": "snapshot", "rid": msg.message_id or ""}
        else:
            try:
                record = orjson.loads(msg.body)
            except orjson.JSONDecodeError:
                log.warning("resource store: record at offset %d is not JSON; skipped", offset)
                return
        before = self.state.version
        outcome = self.state.apply(offset, record, len(msg.body))
        if outcome is None:
            return  # already applied (read again after a reconnect)
        waiter = self._waiters.get(record.get("rid", ""))
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)
        if self.state.version != before:
            for listener in self.listeners:
                listener()

    # --- writing -----------------------------------------------------------------------------

    async def submit(self, record: dict[str, Any]) -> Outcome:
        """Publish a record (confirmed) and wait until it came back through the stream."""
        rid = uuid.uuid4().hex
        return await self._send(self._encode(record, rid), rid, record.get("op"))

    def _encode(self, record: dict[str, Any], rid: str) -> bytes:
        return orjson.dumps(
            {**record, "rid": rid, "time": now_rfc3339("seconds"), "writer": self.writer}
        )

    async def _send(self, body: bytes, rid: str, op: str | None) -> Outcome:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            try:
                await self.publisher.publish(
                    "",
                    self.queue,
                    aio_pika.Message(
                        body,
                        message_id=rid,
                        # The record's op, readable without decoding the body: a reader
                        # skips the entries of a snapshot it does not need (`_process`).
                        type=op,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    mandatory=True,
                )
            except PublishFailed as e:
                raise StoreUnavailable(f"the resource store did not take the change: {e}") from None
            outcome = await self._read_back(fut)
        finally:
            self._waiters.pop(rid, None)
        if op != "hello":
            self._maybe_snapshot()
        return outcome

    async def _read_back(self, fut: asyncio.Future[Outcome]) -> Outcome:
        """Wait for a record published to come back through the stream: as long as the
        reader keeps applying records ahead of it, and at most `timeout` seconds without
        one. A replica starting against a long stream (10,000 records and snapshots of
        thousands of resources) reads for longer than any fixed timeout on a busy machine,
        and used to give up while reading fine (issue 13); a reader that stalls still fails
        after `timeout`."""
        while True:
            seen = self.records_read
            try:
                async with asyncio.timeout(self.timeout):
                    return await asyncio.shield(fut)
            except TimeoutError:
                if self.records_read == seen:
                    raise StoreUnavailable(
                        "the change was accepted by RabbitMQ but not read back in time; it "
                        "may still apply"
                    ) from None
                log.info(
                    "resource store: still reading the stream (at offset %d), waiting on",
                    self.state.last_offset,
                )

    async def sync(self) -> None:
        """Return once every record written before this call has been applied here."""
        await self.submit({"op": "hello"})

    async def apply(
        self,
        manifest: dict[str, Any],
        key: Key,
        *,
        origin: str,
        source: str = "",
        expect: str | int | None = None,
    ) -> Outcome:
        return await self.submit(
            {
                "op": "apply",
                "key": list(key),
                "manifest": manifest,
                "origin": origin,
                "source": source,
                "uid": str(uuid.uuid4()),
                "expect": expect,
            }
        )

    async def delete(self, key: Key, *, expect: str | int | None = "present") -> Outcome:
        return await self.submit({"op": "delete", "key": list(key), "expect": expect})

    def get(self, key: Key) -> Entry | None:
        return self.state.entries.get(key)

    # --- retention ---------------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        s = self.state
        # By count, at most one snapshot per as many records as it holds entries: a snapshot
        # of 5,000 Triggers (megabytes) every 1,000 small records made the stream mostly
        # snapshots, which every new replica reads (issue 13). Retention's safety rests on
        # the byte rule (a quarter of the maximum), which stays as it was.
        due = (
            s.records_since_snapshot >= max(SNAPSHOT_RECORDS, len(s.entries))
            or s.bytes_since_snapshot >= self.max_bytes // 4
        )
        if due and s.based and not self._snapshotting:
            self._snapshotting = True
            asyncio.create_task(self._snapshot(), name="store snapshot")

    async def _snapshot(self) -> None:
        try:
            # Encoded once, and only the bytes are kept while the record is published and
            # read back (it used to be encoded twice, from a deep copy of every entry that
            # lived until then: ~8 MiB of dicts at 5,000 Triggers; issue 13).
            rid = uuid.uuid4().hex
            record = self.state.snapshot_record()
            count = len(record["entries"])
            body = self._encode(record, rid)
            del record
            if len(body) > self.max_bytes // 4:
                log.warning(
                    "resource store snapshot is %d bytes, over a quarter of "
                    "RABBITMESH_STORE_MAX_BYTES (%d): raise it, or retention may drop records "
                    "a new replica needs",
                    len(body),
                    self.max_bytes,
                )
            await self._send(body, rid, "snapshot")
            log.info("resource store snapshot written (%d resources)", count)
        except StoreUnavailable as e:
            log.warning("resource store snapshot not written: %s", e)
        finally:
            self._snapshotting = False
