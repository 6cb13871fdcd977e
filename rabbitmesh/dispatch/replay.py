"""Running one Replay (docs/replay.md): read the broker's archive, send the window again.

Exactly once per Replay, across restarts:
- The Replay's progress queue `{prefix}.replay.{ns}.{name}` holds its progress record (end
  marker, last archive offset handled, counts). Its one consumer (exclusive: other replicas
  stand by) is the replica that runs the Replay: the queue is also the lease.
- Replayed events go to the destination queue (the trigger's queue, or the Replay's own
  delivery queue for a sink) on an AMQP *transaction* channel, together with the new progress
  record and the ack of the old one; `tx.commit` makes all of it happen or none of it. A
  rabbitmesh killed mid-batch leaves neither the batch nor its progress: the next runner
  starts after the last committed offset, so no event is sent twice or skipped.
- The window's end is an end marker appended to the archive when the Replay first starts
  (streams report no exact "last offset" over AMQP); it is part of the progress record, so a
  resumed Replay ends at the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractTransaction

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.messages import to_message
from rabbitmesh.amqp.streams import append_marker, read_stream
from rabbitmesh.cloudevents import CloudEvent, decode_amqp
from rabbitmesh.dispatch.worker import EventFilter
from rabbitmesh.resources.replay import REPLAY_EXTENSION

log = logging.getLogger("rabbitmesh.replay")

#: Events per transaction: a crash repeats none of them, so this only trades commit cost;
#: a transaction is also committed at least every COMMIT_INTERVAL seconds (slow rates).
BATCH = 100
COMMIT_INTERVAL = 1.0
#: A standby runner asks for the lease again this often.
STANDBY_RETRY = 2.0
#: The archive is read from this much before `from` (a timestamp start lands on a chunk,
#: and each event's own knativearrivaltime decides).
START_SLACK = timedelta(seconds=2)
#: A `from` before this reads the archive from its first message.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Progress:
    marker: str
    offset: int | None = None  # the last archive offset handled (sent or skipped)
    replayed: int = 0
    total: int | None = None
    done: bool = False
    seq: int = 0

    def dump(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def load(cls, body: bytes) -> Progress | None:
        try:
            data = orjson.loads(body)
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError):
            return None


@dataclass
class Plan:
    """What a runner needs of its Replay (fixed while it runs)."""

    name: str
    namespace: str
    archive: str
    progress_queue: str
    destination_queue: str
    start: datetime
    #: None: up to the end marker, appended when the Replay first starts (its creation)
    end: datetime | None
    filters: list[EventFilter]
    queue_arguments: dict[str, Any]


def arrival(event: CloudEvent) -> datetime | None:
    raw = event.attributes.get("knativearrivaltime")
    if isinstance(raw, datetime):
        return raw
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


class ReplayRunner:
    """Runs one Replay on whichever replica holds its lease; reports through `report`."""

    def __init__(
        self,
        plan: Plan,
        publisher: AmqpClient,
        rate: float,
        report: Callable[[str, Progress | None, str], None],
    ) -> None:
        self.plan = plan
        self.publisher = publisher
        self.rate = rate
        #: (state, progress, message): state is running, standby, done or failed.
        self.report = report
        self._task: asyncio.Task[None] | None = None
        #: Set once the end marker is in the archive (or another replica holds the lease).
        self.started = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"replay {self.plan.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    async def _run(self) -> None:
        while True:
            try:
                if await self._hold_and_replay():
                    return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RabbitMQ away, archive gone: report, try again
                log.warning("replay %s: %s; trying again", self.plan.name, e)
                self.report("failed", None, f"{type(e).__name__}: {e}")
            await asyncio.sleep(STANDBY_RETRY)

    async def _hold_and_replay(self) -> bool:
        """True once the Replay is done; False to be called again (standing by)."""
        # A connection of its own, not robust: a reconnect must never carry on publishing
        # on a channel that lost its transaction mode.
        conn = await aio_pika.connect(self.publisher.url, ssl_context=self.publisher.ssl_context)
        try:
            ch = await conn.channel(publisher_confirms=False)
            await ch.set_qos(prefetch_count=100)
            q = await ch.declare_queue(
                self.plan.progress_queue, durable=True, arguments=self.plan.queue_arguments
            )
            waiting = int(q.declaration_result.message_count or 0)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            try:
                await q.consume(inbox.put, exclusive=True)
            except aiormq.exceptions.ChannelAccessRefused:
                self.report("standby", None, "running on another replica")
                self.started.set()
                return False
            tx = ch.transaction()
            await tx.select()
            held = [await asyncio.wait_for(inbox.get(), 10) for _ in range(waiting)]
            loaded = [p for p in (Progress.load(m.body) for m in held) if p is not None]
            progress = max(loaded, key=lambda p: p.seq) if loaded else None
            if progress is None:
                marker = await append_marker(self.publisher, self.plan.archive)
                progress = Progress(marker=marker)
                await self._commit(ch, tx, inbox, held, progress)
            self.started.set()
            if progress.total is None and self._window_after_marker():
                # The window starts after the end marker: nothing can be in it, and a read
                # from there would wait for a marker already behind it, for ever.
                progress.total, progress.done = 0, True
                await self._commit(ch, tx, inbox, held, progress)
            if progress.total is None:
                progress.total = await self._count(progress.marker)
                await self._commit(ch, tx, inbox, held, progress)
            self.report("done" if progress.done else "running", progress, "")
            if not progress.done:
                await self._replay(ch, tx, inbox, held, progress)
                progress.done = True
                await self._commit(ch, tx, inbox, held, progress)
                self.report("done", progress, "")
            return True
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    def _wanted(self, event: CloudEvent) -> bool:
        when = arrival(event)
        if when is not None and when < self.plan.start:
            return False
        if when is not None and self.plan.end is not None and when > self.plan.end:
            return False
        return all(f.matches(event.attributes) for f in self.plan.filters)

    def _window_after_marker(self) -> bool:
        """True when `from` is later than now, so later than the end marker (appended before
        this is asked): every archived event arrived before the marker, none is in the window.
        (A `from` after the Replay's creation used to make its reader wait for the marker from
        a point past it: StreamReadTimeout, then again every 7 s, for ever.)"""
        return self.plan.start > datetime.now(UTC)

    def _events(self, marker: str, after: int | None) -> Any:
        start: str | int | datetime
        if after is not None:
            start = after + 1
        else:
            try:
                start = self.plan.start - START_SLACK
                if start < EPOCH:  # AMQP timestamps are unsigned seconds since 1970
                    start = "first"
            except OverflowError:
                # `from` near year 1 (OverflowError, then again every 2 s, for ever); nothing
                # is older than the archive's first message anyway.
                start = "first"
        return read_stream(self.publisher, self.plan.archive, start, marker)

    async def _count(self, marker: str) -> int:
        total = 0
        async for _offset, msg in self._events(marker, None):
            event = _decode(msg)
            if event is not None and self._wanted(event):
                total += 1
        return total

    async def _replay(
        self,
        ch: AbstractChannel,
        tx: AbstractTransaction,
        inbox: asyncio.Queue[AbstractIncomingMessage],
        held: list[AbstractIncomingMessage],
        progress: Progress,
    ) -> None:
        pending, committed_at = 0, time.monotonic()
        interval, next_at = 1.0 / self.rate, time.monotonic()
        async for offset, msg in self._events(progress.marker, progress.offset):
            if progress.offset is not None and offset <= progress.offset:
                continue
            progress.offset = offset
            event = _decode(msg)
            if event is None or not self._wanted(event):
                continue
            event.attributes[REPLAY_EXTENSION] = self.plan.name
            out = to_message(event)
            await ch.default_exchange.publish(
                aio_pika.Message(
                    out.body,
                    headers=out.properties.headers,
                    content_type=out.properties.content_type,
                    message_id=out.properties.message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                self.plan.destination_queue,
            )
            progress.replayed += 1
            pending += 1
            if pending >= BATCH or time.monotonic() - committed_at >= COMMIT_INTERVAL:
                await self._commit(ch, tx, inbox, held, progress)
                self.report("running", progress, "")
                pending, committed_at = 0, time.monotonic()
            next_at += interval  # the documented rate limit: live traffic keeps flowing
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()

    async def _commit(
        self,
        ch: AbstractChannel,
        tx: AbstractTransaction,
        inbox: asyncio.Queue[AbstractIncomingMessage],
        held: list[AbstractIncomingMessage],
        progress: Progress,
    ) -> None:
        """The new progress record, the ack of the records held, and whatever was published
        since the last commit: all of it, or (a crash before commit-ok) none of it."""
        while not inbox.empty():
            held.append(inbox.get_nowait())
        progress.seq += 1
        await ch.default_exchange.publish(
            aio_pika.Message(progress.dump(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            self.plan.progress_queue,
        )
        for m in held:
            await m.ack()
        await tx.commit()
        held.clear()


def _decode(msg: AbstractIncomingMessage) -> CloudEvent | None:
    try:
        return decode_amqp(dict(msg.headers or {}), msg.body, msg.content_type)
    except Exception:  # not a CloudEvent (the archive takes what the exchange routed)
        return None
