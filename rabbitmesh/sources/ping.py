"""PingSource: an event of type `dev.knative.sources.ping` on every tick of a cron schedule.

Event (as Knative's mt-ping adapter makes it): source `/apis/v1/namespaces/{ns}/pingsources/
{name}`, a fresh id per tick, `datacontenttype` = `spec.contentType` when there is data, data =
`spec.data` (UTF-8) or `spec.dataBase64` decoded, `ceOverrides.extensions` as extensions, and
`time` = the tick's scheduled time (Knative's SDK stamps the send time, a few ms later).
Sending retries with capped exponential backoff (rabbitmesh/sources/sender.py).

One event per tick, whatever the number of replicas: only the lease holder ticks
(rabbitmesh/sources/leader.py), and it records each tick in a one-message queue
(`...:state`, `x-max-length: 1`, publisher-confirmed) *before* sending it. A new leader reads
that record: it never fires a tick the old one fired, and it fires the ticks that fell into the
handover (scheduled after the last recorded one, at most CATCH_UP_SECONDS ago) at once, late
rather than never. So a tick is sent at most once; a leader killed between recording and
sending loses that one tick (at-most-once, as Knative, which keeps nothing). Only in a network
partition, for at most a heartbeat, could two leaders tick at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.cron import Schedule
from rabbitmesh.resources.sources import PING_TYPE, PingSource
from rabbitmesh.sources.manager import Plan, Runtime
from rabbitmesh.sources.sender import Retry, deliver, new_event
from rabbitmesh.timestamps import rfc3339

log = logging.getLogger("rabbitmesh.sources")
#: `Authorization` headers for each send (the source's OIDC identity).
Auth = Callable[[], dict[str, str] | None]

#: Ticks missed while leadership moved are fired late if they are at most this old.
CATCH_UP_SECONDS = 10.0
#: In-flight sends a stopping leader lets finish before it hands the lease over.
SEND_GRACE_SECONDS = 5.0
#: Knative retries a ping 5 times from 50 ms; a little more patience here, still well
#: within a minute.
PING_RETRY = Retry(retries=6, backoff=0.2, max_backoff=10.0, timeout=30.0)
#: The state queue of a source no replica ran for this long goes away by itself.
STATE_EXPIRES_MS = 7 * 24 * 3600 * 1000


def plan(source: PingSource, sink: str, auth: Auth | None = None) -> Plan:
    return Plan(
        key=source.key,
        what=f"PingSource {source.namespace}/{source.name}",
        fingerprint=(source.spec.dump(), sink, auth is not None),
        work=lambda rt: run(source, sink, rt, auth),
        on_delete=delete_state,
    )


def make_event(source: PingSource, tick: datetime) -> CloudEvent:
    """The event of one tick (a fresh id each time)."""
    data = source.payload()
    return new_event(
        PING_TYPE,
        source.ce_source,
        data=data,
        datacontenttype=source.spec.content_type if data is not None else None,
        time=rfc3339(tick),
        extensions=source.extensions,
    )


class TickRecord:
    """The last tick fired, kept in RabbitMQ so that the next leader knows it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.name = runtime.queue("state")
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None

    async def open(self) -> None:
        conn = await self.runtime.elector.connected()
        self.channel = await conn.channel(publisher_confirms=True)
        await self._declare()

    async def _declare(self) -> None:
        # Declared again before each record: a queue expired (x-expires) while a monthly
        # schedule waited would otherwise swallow the record unnoticed.
        assert self.channel is not None
        self.queue = await self.channel.declare_queue(
            self.name,
            durable=True,
            arguments={"x-max-length": 1, "x-expires": STATE_EXPIRES_MS},
        )

    async def last(self) -> datetime | None:
        assert self.queue is not None
        message = await self.queue.get(no_ack=False, fail=False)
        if message is None:
            return None
        await message.reject(requeue=True)  # a peek: the record stays for the next leader
        try:
            return datetime.fromisoformat(message.body.decode())
        except ValueError:
            return None

    async def record(self, tick: datetime) -> None:
        """Confirmed by RabbitMQ before it returns (raises otherwise: no record, no send)."""
        await self._declare()
        assert self.channel is not None
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                tick.astimezone(UTC).isoformat().encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.name,
        )

    async def close(self) -> None:
        if self.channel is not None and not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.channel.close()


def first_start(last: datetime | None, now: datetime) -> datetime:
    """Tick from here: after the last recorded tick, but not further back than the catch-up
    window; from now when no tick was ever recorded."""
    if last is None:
        return now
    return max(last, now - timedelta(seconds=CATCH_UP_SECONDS))


async def run(source: PingSource, sink: str, rt: Runtime, auth: Auth | None = None) -> None:
    schedule = Schedule(source.spec.schedule, source.spec.timezone)
    record = TickRecord(rt)
    sending: set[asyncio.Task[None]] = set()
    try:
        await record.open()
        start = first_start(await record.last(), datetime.now(UTC))
        rt.report(None)
        for tick in schedule.ticks_after(start):
            await sleep_until(tick)
            await record.record(tick)
            task = asyncio.create_task(_send(source, sink, tick, rt, auth))
            sending.add(task)
            task.add_done_callback(sending.discard)
    finally:
        if sending:
            _, pending = await asyncio.wait(sending, timeout=SEND_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        await record.close()


async def sleep_until(when: datetime) -> None:
    """Sleep until a wall-clock time, re-reading the clock every 30 s (it may be stepped)."""
    while True:
        wait = (when - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            return
        await asyncio.sleep(min(wait, 30.0))


async def _send(
    source: PingSource, sink: str, tick: datetime, rt: Runtime, auth: Auth | None
) -> None:
    event = make_event(source, tick)
    outcome = await deliver(
        rt.session,
        sink,
        event,
        namespace=source.namespace,
        what=rt.what,
        retry=PING_RETRY,
        auth=auth,
    )
    if outcome.ok:
        log.debug("%s: tick %s sent as %s", rt.what, event.attributes["time"], event.id)


async def delete_state(rt: Runtime) -> None:
    """The source is gone: so is its tick record."""
    conn = await rt.elector.connected()
    channel = await conn.channel()
    try:
        await channel.queue_delete(rt.queue("state"))
    finally:
        await channel.close()
