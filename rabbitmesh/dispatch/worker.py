"""A queue's consumer: deliver each event to its subscriber, retry, dead-letter, reply.

Every outcome is made durable in RabbitMQ before the message is acked:
- success: the reply (if any) is published with confirm, then ack;
- retryable failure with retries left: a copy goes to the delay queue for its backoff with
  the retry count in a header (confirmed), then ack; nothing waits in memory;
- final failure: the event, with knativeerror* extensions, goes to the queue's `:dlq`
  (confirmed), then ack; with no dead-letter sink it is dropped and logged;
- a publish that fails for now (PublishFailed: RabbitMQ down, blocked, slow): nack, so
  RabbitMQ redelivers (or dead-letters) it.

What can never succeed is never requeued (docs/delivery.md, "Poison messages"):
- a message that is not a CloudEvent, or cannot be decoded at all: parked once;
- an event that cannot be encoded for HTTP (`Outcome.unsendable`): dead-lettered at once;
- a reply RabbitMQ could never take (UnpublishableMessage): a failed delivery of the event it
  answers (code 502), so retried per the delivery policy, then dead-lettered;
- a retry, dead letter or parked copy too large to publish: a smaller copy, else RabbitMQ's
  own dead-lettering of the message as it came (nack without requeue);
- any other exception while handling (a bug): the redelivery guard republishes the message
  through a delay queue with a count in `x-rabbitmesh-handler-errors`, and parks it at
  HANDLER_ERROR_LIMIT. The count travels in the message, so it survives a restart.
With `concurrency` 1 the queue is delivered strictly in order.

A worker consumes on a channel it may share with other workers (amqp/pool.py): it settles
every delivery it took itself (ack, nack, or a nack handing it back when it stops), never
by closing the channel, and never with a `multiple` that could reach a neighbour's delivery
(the channel's one AckBatcher, dispatch/acks.py, decides those).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from rabbitmesh import metrics, telemetry
from rabbitmesh.amqp.channels import TidyRobustChannel
from rabbitmesh.amqp.client import AmqpClient, PublishFailed, UnpublishableMessage
from rabbitmesh.amqp.messages import (
    ATTEMPTS_HEADER,
    RETRIES_HEADER,
    Outgoing,
    raw_message,
    to_message,
)
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.pool import ConsumerPool
from rabbitmesh.amqp.publisher import Publisher, WorkerQueues
from rabbitmesh.amqp.topology import DELAY_HEADER
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent, decode_amqp
from rabbitmesh.dataplane import TTL, stamp_arrival
from rabbitmesh.dispatch.acks import AckBatcher, batcher_for
from rabbitmesh.dispatch.deadletter_store import KeepDeadLetter, store_entry
from rabbitmesh.dispatch.decision import Action, Decision, decide, final
from rabbitmesh.dispatch.policy import DeliveryPolicy
from rabbitmesh.dispatch.sender import DEFAULT_MAX_REPLY_BYTES, Outcome, send

log = logging.getLogger("rabbitmesh.dispatch")

#: What acking or nacking raises when the channel is gone: transient, not a poison message.
_CHANNEL_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError)

ReplyHandler = Callable[[CloudEvent, CloudEvent], Awaitable[None]]
"""(original event, reply) -> publishes the reply durably; raises PublishFailed."""

ERROR_DATA_LIMIT = 1024

#: Pause before handing a message back after a failed publish, so a RabbitMQ hiccup does not
#: turn into a tight redelivery loop that hammers the subscriber.
REQUEUE_PAUSE = 1.0

#: Backoff of a worker consuming again after RabbitMQ cancelled its consumer (its queue was
#: deleted): first wait, and the most it grows to.
RESUME_FIRST = 0.5
RESUME_MAX = 30.0

#: Longest `finish` waits for cancelled deliveries to unwind before handing back what they held.
UNWIND_TIMEOUT = 5.0

#: How many times handling one message ended in an unexpected exception (the redelivery
#: guard). RabbitMQ gives classic queues only a `redelivered` flag, so the count travels in
#: the message itself and survives a restart of rabbitmesh.
HANDLER_ERRORS_HEADER = "x-rabbitmesh-handler-errors"
#: Unexpected exceptions one message may cause before it is parked.
HANDLER_ERROR_LIMIT = 3
#: Wait before handling a message again after an unexpected exception, times the count: a
#: failure that is not the message's fault (a passing race) gets a chance to clear.
HANDLER_ERROR_BACKOFF = 1.0
#: At most one traceback per worker in this many seconds; other errors get one line each.
TRACEBACK_INTERVAL = 1.0
#: At most one warning per worker in this many seconds about publishes RabbitMQ could not
#: take for now (they repeat for every in-flight message while it is down or blocked).
TRANSIENT_LOG_INTERVAL = 1.0
#: knativeerrorcode when the subscriber's reply can never be published (too large, an
#: attribute over AMQP's limits): the subscriber answered with something unusable, as for a
#: reply that is not a CloudEvent (Knative's broker answers 502 for that).
UNPUBLISHABLE_REPLY_CODE = 502


class Incoming(Protocol):
    """A message taken from a queue: what the worker reads and answers of aio-pika's
    AbstractIncomingMessage (unit tests hand it a stub, tests/support/stubs.py)."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def content_type(self) -> str | None: ...

    @property
    def message_id(self) -> str | None: ...

    async def ack(self, multiple: bool = False) -> None: ...

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None: ...


class EventFilter(Protocol):
    def matches(self, attributes: Mapping[str, Any]) -> bool: ...


@dataclass
class Subscriber:
    """Where and how a queue delivers. Replaced as a whole when its resource changes."""

    name: str  # "Trigger default/tr1", for logs
    namespace: str
    url: str
    policy: DeliveryPolicy
    filter: EventFilter | None = None
    on_reply: ReplyHandler | None = None
    reply_must_be_event: bool = True
    #: not sent to the subscriber: a Trigger's drop the broker TTL (rabbitmesh/dataplane.py)
    drop_attributes: tuple[str, ...] = (TTL,)
    #: With no dead-letter sink, keeps a final failure in the dead-letter store of the queue
    #: named (docs/delivery.md) instead of dropping it as Knative does; None drops.
    keep_dead_letter: KeepDeadLetter | None = None
    #: `Authorization` for each request (the sender's OIDC identity), when there is one.
    auth: Callable[[], dict[str, str] | None] | None = None
    #: `Authorization` for its dead-letter sink's deliveries (the same sender, the sink's
    #: audience), when there is one.
    dead_letter_auth: Callable[[], dict[str, str] | None] | None = None


@dataclass
class WorkerStats:
    delivered: int = 0
    filtered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    parked: int = 0
    in_flight: int = 0
    #: HTTP attempts (and events found unsendable before any request)
    attempts: int = 0
    #: unexpected exceptions while handling a message (the redelivery guard's count)
    handler_errors: int = 0
    last_error: str = ""


def log_fields(event: CloudEvent, sub: Subscriber, attempt: int) -> dict[str, Any]:
    """Fields of a delivery log line (the JSON log format shows them as keys); never data."""
    return {
        "event_id": event.attributes.get("id"),
        "event_type": event.attributes.get("type"),
        "subscriber": sub.name,
        "attempt": attempt,
    }


class Inbox:
    """A worker's deliveries waiting for a delivery task: FIFO, unbounded (RabbitMQ's
    prefetch bounds it), awaited by the worker's tasks.

    asyncio.Queue would do, but it allocates four deques up front (getters, putters, items
    and its `join` event's waiters), about 2.6 KiB, and 5,000 idle Triggers each keep one
    for ever. Here the items' deque exists only while something waits in it, and waiting
    tasks are a short list of futures."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: collections.deque[Incoming] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: Incoming) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Incoming:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Incoming:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if self._items and not waiter.cancelled():
                    # woken, then cancelled before it ran: the item is another's
                    self._wake_one()
                raise
        return self.get_nowait()


class Held:
    """A delivery this worker holds until it settles it: aio-pika's message, and whether an
    ack or nack of it has begun. `finish` hands back (nacks) every delivery whose settling
    never began, so none stays unacknowledged on a channel that outlives the worker; one
    that began is left to finish (shielded from the worker's cancellation, so its frame is
    either sent whole or the channel is gone)."""

    __slots__ = ("msg", "body", "headers", "content_type", "message_id", "delivery_tag", "settling")

    def __init__(self, msg: AbstractIncomingMessage) -> None:
        self.msg = msg
        self.body = msg.body
        self.headers = msg.headers
        self.content_type = msg.content_type
        self.message_id = msg.message_id
        self.delivery_tag = msg.delivery_tag
        self.settling = False

    @property
    def channel(self) -> Any:
        """The AMQP channel it came on (raises once that is closed), for the AckBatcher."""
        return self.msg.channel

    @property
    def processed(self) -> bool:
        return self.msg.processed

    async def ack(self, multiple: bool = False) -> None:
        self.settling = True
        await asyncio.shield(self.msg.ack(multiple=multiple))

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self.settling = True
        await asyncio.shield(self.msg.nack(multiple=multiple, requeue=requeue))


class QueueWorker:
    """Consumes one queue with `concurrency` deliveries in flight."""

    def __init__(
        self,
        *,
        queue: str,
        subscriber: Subscriber,
        consumer: AmqpClient | ConsumerPool,
        publisher: Publisher,
        topology: WorkerQueues,
        names: Names,
        session: aiohttp.ClientSession,
        prefetch: int,
        concurrency: int,
        mode: Literal["deliver", "dead-letter"] = "deliver",
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.queue_name = queue
        self.max_reply_bytes = max_reply_bytes  # RABBITMESH_MAX_EVENT_BYTES
        self.subscriber = subscriber
        self.consumer = consumer
        self.publisher = publisher
        self.topology = topology
        self.names = names
        self.session = session
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.mode = mode
        self.stats = WorkerStats()
        self._buffer = Inbox()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._busy: set[asyncio.Task[None]] = set()
        #: Deliveries taken from RabbitMQ and not yet settled: handed back by `finish`.
        self._held: dict[int, Held] = {}
        self._stopping = False
        self._finished = False
        #: Consuming again after RabbitMQ cancelled the consumer (`_consumer_lost`).
        self._resuming: asyncio.Task[None] | None = None
        self._last_traceback = -TRACEBACK_INTERVAL
        self._last_transient_warning = -TRANSIENT_LOG_INTERVAL
        #: Acks of successful deliveries, batched per loop iteration: the channel's batcher,
        #: shared with the other workers on it (dispatch/acks.py).
        self._acks = AckBatcher()

    async def start(self) -> None:
        channel = self._channel = await self.consumer.lease(self.prefetch)
        try:
            self._acks = batcher_for(channel)
            if isinstance(channel, TidyRobustChannel):
                self._queue = channel.queue_to_consume(self.queue_name)
                await self._consume_listed()
            else:
                self._queue = await channel.get_queue(self.queue_name, ensure=True)
                await self._consume()
        except BaseException:
            await self._leave_channel()
            raise

    async def _consume(self) -> None:
        assert self._queue is not None
        self._tag = await self._queue.consume(self._take)
        if isinstance(self._channel, TidyRobustChannel):
            self._channel.on_broker_cancel(self._tag, self._consumer_lost)

    def _consumer_lost(self) -> None:
        """RabbitMQ cancelled the consumer: the queue was deleted (another replica, or another
        worker process of this one, reconciled a delete first; or an operator). The delete
        usually reaches this worker within milliseconds and stops it; if the queue comes
        back instead (the name re-created), consume it again.

        Meanwhile the queue leaves the channel's restore list: restored after a reconnect,
        its passive declare would fail (NOT_FOUND) and with it the restore of the whole
        connection, every second, for as long as the queue stays away (all the neighbours
        stopped, their unacked deliveries coming back again and again).

        The channel also calls this when its restore after a reconnect finds the queue gone
        (deleted while the connection was down): it is left out of that restore
        (TidyRobustChannel._restore_queues)."""
        self._tag = None
        if isinstance(self._channel, TidyRobustChannel) and self._queue is not None:
            self._channel.forget_queue(self._queue)
        if not self._stopping and self._resuming is None:
            self._resuming = asyncio.create_task(
                self._consume_again(), name=f"consume {self.queue_name} again"
            )

    async def _consume_again(self) -> None:
        delay = RESUME_FIRST
        try:
            while not self._stopping:
                await asyncio.sleep(delay)  # a backoff between attempts
                delay = min(2 * delay, RESUME_MAX)
                if self._stopping or self._channel is None:
                    return
                try:
                    # On a channel of its own: a missing queue closes the channel it is
                    # asked on, and the worker's is shared (amqp/pool.py).
                    probe = await self.consumer.channel()
                    try:
                        await probe.declare_queue(self.queue_name, passive=True, robust=False)
                    finally:
                        with contextlib.suppress(Exception):
                            await probe.close()
                    if self._stopping:
                        return
                    await self._consume_listed()
                except Exception as e:
                    log.debug("%s not consumed again yet: %s", self.queue_name, e)
                    continue
                log.info("consuming %s again (its queue was deleted and is back)", self.queue_name)
                return
        finally:
            self._resuming = None

    async def _consume_listed(self) -> None:
        """Consume again, with the queue back on the channel's restore list."""
        channel, queue = self._channel, self._queue
        if not isinstance(channel, TidyRobustChannel) or queue is None:
            await self._consume()
            return
        # Not while the channel is restored (after a reconnect or a channel error; a leased
        # channel may be mid-restore, its new underlay open): that restore would consume this
        # queue again under the same tag (DuplicateConsumerTag) and fail the connection's.
        # A passive declare here waited for this too (RobustChannel.declare_queue).
        await channel.ready()
        channel.remember_queue(queue)
        try:
            await self._consume()
        except BaseException:
            channel.forget_queue(queue)
            raise

    async def _take(self, msg: AbstractIncomingMessage) -> None:
        """aio-pika's consumer callback: hold the delivery until it is settled."""
        held = Held(msg)
        if self._finished:  # arrived after `finish` handed back the rest: hand it back too
            await self._cancel_orphan(msg)
            await self._hand_back(held)
            return
        self._held[id(held)] = held
        await self._arrived(held)

    async def _arrived(self, msg: Incoming) -> None:
        """Buffer a delivery; start another delivery task when none is free to take it.

        Tasks start on demand, up to `concurrency`, and then stay: an idle task costs about
        a kilobyte, and 5,000 quiet triggers at concurrency 64 would hold 320,000 of them.
        With concurrency 1 there is never more than one task, so order is kept.
        """
        self._buffer.put_nowait(msg)  # after stop() began: handed back by stop()
        idle = len(self._tasks) - len(self._busy)
        if self._stopping or len(self._tasks) >= self.concurrency:
            return
        if self._buffer.qsize() > idle:
            n = len(self._tasks)
            self._tasks.append(
                asyncio.create_task(self._work(), name=f"deliver {self.queue_name} #{n}")
            )

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, finish in-flight deliveries (bounded), hand back the rest."""
        await self.stop_consuming()
        await self.drain(timeout)
        await self.finish()

    async def stop_consuming(self) -> None:
        """The first step of `stop`: RabbitMQ sends no more, and no delivery starts."""
        if self._resuming is not None:
            self._resuming.cancel()
        if isinstance(self._channel, TidyRobustChannel) and self._queue is not None:
            # Out of the restore list first: the cancel below waits for a connection that is
            # down, and the queue may be deleted meanwhile (this is often a Trigger's delete).
            self._channel.forget_queue(self._queue)
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        self._stopping = True
        for t in self._tasks:
            if t not in self._busy:
                t.cancel()

    async def drain(self, timeout: float) -> None:
        """The second step of `stop`: wait (up to `timeout`) for the deliveries in flight."""
        if self._busy and timeout > 0:
            await asyncio.wait(list(self._busy), timeout=timeout)

    async def finish(self) -> None:
        """The last step of `stop`: cancel what is still in flight, hand back (nack) every
        delivery held and not settled (in flight or buffered), ack what finished, and leave
        the channel (closed once no other worker consumes on it)."""
        self._stopping = True
        self._finished = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:  # let them unwind, so what each held is known
            await asyncio.wait(self._tasks, timeout=UNWIND_TIMEOUT)
        while not self._buffer.empty():
            self._buffer.get_nowait()
        for held in sorted(self._held.values(), key=_tag_order):  # queue order, as they came
            if not held.settling:
                await self._hand_back(held)
            else:  # its ack or nack is on the way (shielded): it no longer holds up others
                self._acks.settled(held)
        self._held.clear()
        await self._acks.drain()  # what finished is acked, not redelivered after a restart
        await self._leave_channel()

    @staticmethod
    async def _cancel_orphan(msg: AbstractIncomingMessage) -> None:
        """A delivery after `finish` came through a consumer this worker no longer owns: a
        consume that completed while the worker stopped (a `start` or a consume-again cut
        short), which nothing cancels. Cancel it before handing the delivery back, or RabbitMQ
        hands it straight back to it, for as long as the shared channel lives."""
        if msg.consumer_tag is not None:
            with contextlib.suppress(Exception):
                await msg.channel.basic_cancel(msg.consumer_tag)

    async def _hand_back(self, held: Held) -> None:
        """Back to RabbitMQ, for this or another replica's next consumer."""
        with contextlib.suppress(Exception):
            await held.nack(requeue=True)
        self._acks.settled(held)

    async def _leave_channel(self) -> None:
        channel, queue, self._channel, self._queue = self._channel, self._queue, None, None
        if channel is None:
            return
        if isinstance(channel, TidyRobustChannel):
            if queue is not None:
                channel.forget_queue(queue)
            if self._tag is not None:
                channel.forget_consumer(self._tag)
        await self.consumer.release(channel)

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            msg = await self._buffer.get()
            self._busy.add(task)
            self.stats.in_flight += 1
            finished = False
            try:
                await self._handle(msg)
                finished = True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must neither kill the worker, lose the message
                await self._guard(msg, e)  # nor loop on it
                finished = True
            finally:
                if finished:
                    self._acks.settled(msg)
                    self._held.pop(id(msg), None)
                # else: cancelled mid-delivery (stop() gave up on a hanging subscriber). It is
                # neither acked nor nacked, so it must not count as settled yet: a `multiple`
                # ack of a later tag would ack it, and the event would be lost. `finish`
                # hands it back.
                self.stats.in_flight -= 1
                self._busy.discard(task)

    async def _handle(self, msg: Incoming) -> None:
        headers = msg.headers or {}
        try:
            event = decode_amqp(headers, msg.body, msg.content_type)
        except InvalidEvent as e:
            await self._park(msg, f"not a CloudEvent: {e}")
            return
        except (RecursionError, ValueError, TypeError) as e:  # the codec choked: same verdict
            await self._park(msg, f"cannot be decoded: {type(e).__name__}: {e}")
            return
        sub = self.subscriber
        if sub.filter is not None and not sub.filter.matches(event.attributes):
            self.stats.filtered += 1
            await self._ack_batched(msg)
            return
        if self.mode == "deliver":
            stamp_arrival(event)
        retries = _int(headers.get(RETRIES_HEADER))
        outbound = event
        if sub.drop_attributes and any(a in event.attributes for a in sub.drop_attributes):
            outbound = CloudEvent(
                {k: v for k, v in event.attributes.items() if k not in sub.drop_attributes},
                event.data,
                event.trace,
            )
        started = time.perf_counter()
        with telemetry.span(
            outbound,
            operation="process",
            destination=self.queue_name,
            kind="consumer",
            **{"url.full": sub.url, "messaging.message.delivery_attempt": retries + 1},
        ):
            outcome = await self._send(sub, outbound, structured=sub.policy.format == "json")
            if outcome.unsendable and self.mode == "dead-letter" and sub.policy.format == "json":
                # A dead letter whose data the JSON format cannot carry (often the very reason
                # it is a dead letter) still reaches the sink, in binary mode.
                outcome = await self._send(sub, outbound, structured=False)
        metrics.dispatch_latency.labels(sub.name).observe(time.perf_counter() - started)
        metrics.dispatch_events.labels(
            sub.name, metrics.bounded_type(event.type), metrics.code_class(outcome.status)
        ).inc()
        await self._carry_out(msg, event, outcome, retries)

    async def _send(self, sub: Subscriber, event: CloudEvent, structured: bool) -> Outcome:
        self.stats.attempts += 1
        return await send(
            self.session,
            sub.url,
            event,
            namespace=sub.namespace,
            structured=structured,
            timeout=sub.policy.timeout,
            reply_must_be_event=sub.reply_must_be_event,
            extra_headers=sub.auth() if sub.auth is not None else None,
            max_reply_bytes=self.max_reply_bytes,
        )

    async def _carry_out(
        self, msg: Incoming, event: CloudEvent, outcome: Outcome, retries: int
    ) -> None:
        """Do what the delivery core (dispatch/decision.py) decided for this attempt."""
        sub = self.subscriber
        decision = decide(
            outcome,
            retries,
            sub.policy,
            replies=sub.on_reply is not None,
            dead_letter_mode=self.mode == "dead-letter",
        )
        if not outcome.ok:
            self.stats.last_error = outcome.error
        if decision.action is Action.RETRY:
            await self._retry(msg, event, outcome, retries, decision)
        elif decision.action in (Action.ACK, Action.REPLY):
            await self._succeeded(msg, event, outcome, retries)
        else:
            await self._final(msg, event, outcome, retries, decision)

    async def _succeeded(
        self, msg: Incoming, event: CloudEvent, outcome: Outcome, retries: int
    ) -> None:
        sub = self.subscriber
        if outcome.reply is not None and sub.on_reply is not None:
            try:
                await sub.on_reply(event, outcome.reply)
            except UnpublishableMessage as e:
                # Permanent for this reply; the subscriber may answer differently next time,
                # so this is a failed delivery of the original: retried, then dead-lettered.
                why = f"the subscriber's reply cannot be published: {e}"
                failed = Outcome(False, UNPUBLISHABLE_REPLY_CODE, why.encode(), error=why)
                await self._carry_out(msg, event, failed, retries)
                return
            except PublishFailed as e:
                self._transient_log(
                    "reply from %s for event %s could not be published (%s); will redeliver",
                    sub.name,
                    event.id,
                    e,
                    extra=log_fields(event, sub, _attempt(msg)),
                )
                await asyncio.sleep(REQUEUE_PAUSE)
                await _nack(msg, requeue=True)
                return
        self.stats.delivered += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "delivered: event id=%s type=%s %s HTTP %d",
                event.id,
                event.type,
                sub.name,
                outcome.status,
                extra=log_fields(event, sub, _attempt(msg)),
            )
        await self._ack_batched(msg)

    async def _ack_batched(self, msg: Incoming) -> None:
        """Ack through the channel's AckBatcher (the outcome is durable already)."""
        if isinstance(msg, Held):
            msg.settling = True
        await self._acks.ack(msg)

    async def _retry(
        self, msg: Incoming, event: CloudEvent, outcome: Outcome, retries: int, decision: Decision
    ) -> None:
        sub = self.subscriber
        attempt = retries + 1
        log.info(
            "delivery failed: event id=%s type=%s %s attempt=%d (%s); retry in %.3fs",
            event.id,
            event.type,
            sub.name,
            attempt,
            outcome.error,
            decision.delay,
            extra=log_fields(event, sub, attempt),
        )
        try:
            await self._schedule_retry(event, decision.retries, decision.delay)
        except PublishFailed as e:
            self._transient_log(
                "could not schedule retry for event %s (%s); requeued",
                event.id,
                e,
                extra=log_fields(event, sub, attempt),
            )
            await asyncio.sleep(REQUEUE_PAUSE)
            await _nack(msg, requeue=True)
            return
        except UnpublishableMessage as e:  # the retry copy can never be published
            why = f"retry cannot be published ({e})"
            dead_letter_mode = self.mode == "dead-letter"
            verdict = final(outcome, sub.policy, why, dead_letter_mode=dead_letter_mode)
            await self._final(msg, event, outcome, retries, verdict)
            return
        self.stats.retried += 1
        metrics.retries.labels(sub.name).inc()
        await msg.ack()

    async def _final(
        self, msg: Incoming, event: CloudEvent, outcome: Outcome, retries: int, decision: Decision
    ) -> None:
        """A failure that is not retried: park (a dead-letter sink refused it), drop (no
        dead-letter sink) or dead-letter."""
        sub = self.subscriber
        attempt = retries + 1
        why = decision.why
        if decision.action is Action.PARK:
            await self._park(msg, f"dead-letter sink {sub.url} {why}")
            return
        if decision.action is Action.DROP and sub.keep_dead_letter is None:
            _log_final(event, sub, attempt, outcome, why, "no dead-letter sink, event dropped")
            self.stats.dropped += 1
            metrics.dropped.labels(sub.name).inc()
            await msg.ack()
            return
        dead = event.copy()
        dead.attributes["knativeerrordest"] = sub.url
        dead.attributes["knativeerrorcode"] = str(outcome.error_code)
        if outcome.body:
            dead.attributes["knativeerrordata"] = base64.b64encode(outcome.body).decode()[
                :ERROR_DATA_LIMIT
            ]
        try:
            await self._publish_dead_letter(dead, attempt)
        except UnpublishableMessage as e:
            # Even without knativeerrordata it does not fit: let RabbitMQ dead-letter the
            # message as it came (it moves it internally, no frame limit on the way).
            log.warning(
                "dead letter for event %s cannot be published (%s); rejecting it to %s as is",
                event.id,
                e,
                self.names.dead_letter_queue(self._dead_letter_parent()),
                extra=log_fields(event, sub, attempt),
            )
            await self._reject_to_dead_letter_queue(msg)
            self.stats.dead_lettered += 1
            metrics.dead_lettered.labels(sub.name).inc()
            return
        except PublishFailed as e:
            # RabbitMQ's own dead-lettering moves it to the same :dlq queue.
            log.warning(
                "dead-letter publish for event %s failed (%s); rejecting",
                event.id,
                e,
                extra=log_fields(event, sub, attempt),
            )
            await self._reject_to_dead_letter_queue(msg)
            return
        _log_final(event, sub, attempt, outcome, why, "dead-lettered")
        self.stats.dead_lettered += 1
        metrics.dead_lettered.labels(sub.name).inc()
        await msg.ack()

    def _dead_letter_parent(self) -> str:
        """The queue whose `:dlq` and dead-letter store this worker's dead letters go to."""
        return self.queue_name

    async def _reject_to_dead_letter_queue(self, msg: Incoming) -> None:
        """Let RabbitMQ dead-letter `msg` into the `:dlq` (nack without requeue), once that
        queue surely exists: a classic queue's `:dlq` is declared only when first needed
        (amqp/topology.py), and RabbitMQ drops what it dead-letters to a missing queue. If
        the declare fails, `msg` stays unacked and comes back (the redelivery guard)."""
        await self.topology.ensure_dead_letter_queue(self._dead_letter_parent())
        await _nack(msg, requeue=False)

    async def _publish_dead_letter(
        self, dead: CloudEvent, attempts: int = 0, parent: str | None = None
    ) -> None:
        """Publish to the `:dlq` of this queue (or of `parent`, a partition's queue) — with no
        dead-letter sink, to its dead-letter store (docs/delivery.md); if the error data tips
        it over the limits, again without it (knativeerrordest and knativeerrorcode are
        short)."""
        parent = parent or self._dead_letter_parent()
        extra = {ATTEMPTS_HEADER: attempts}
        sub = self.subscriber
        for _ in range(2):
            try:
                if sub.policy.dead_letter_url is None and sub.keep_dead_letter is not None:
                    await sub.keep_dead_letter(parent, store_entry(dead, extra))
                else:
                    dlq = self.names.dead_letter_queue(parent)
                    await self.publisher.publish("", dlq, to_message(dead, extra), mandatory=True)
                return
            except UnpublishableMessage:
                if dead.attributes.pop("knativeerrordata", None) is None:
                    raise

    async def _guard(self, msg: Incoming, exc: Exception) -> None:
        """The redelivery guard: an unexpected exception while handling `msg`.

        Rather than a requeue (RabbitMQ would hand it straight back, for ever), publish a
        copy through a delay queue with the count in HANDLER_ERRORS_HEADER, then ack
        (publish-then-ack: at least once); at HANDLER_ERROR_LIMIT, park it.
        """
        if isinstance(exc, _CHANNEL_ERRORS):
            # RabbitMQ went away under us (an ack on a closed channel, say): not the
            # message's fault, and RabbitMQ redelivers it by itself; a copy would duplicate it.
            log.warning(
                "message %s from %s: %s (%s); RabbitMQ will redeliver it",
                msg.message_id,
                self.queue_name,
                type(exc).__name__,
                str(exc) or "no reason given",  # some of aiormq's errors carry no text
            )
            await asyncio.sleep(REQUEUE_PAUSE)
            await _nack(msg, requeue=True)
            return
        self.stats.handler_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        errors = _int((msg.headers or {}).get(HANDLER_ERRORS_HEADER)) + 1
        self._log_handler_error(msg, exc, errors)
        try:
            if errors >= HANDLER_ERROR_LIMIT:
                await self._park(
                    msg,
                    f"handling failed {errors} times with an unexpected error; last: "
                    f"{type(exc).__name__}: {exc}",
                )
                return
            try:
                await self._redeliver_later(
                    msg, {HANDLER_ERRORS_HEADER: errors}, HANDLER_ERROR_BACKOFF * errors
                )
            except UnpublishableMessage as e:
                await self._park(msg, f"unexpected error ({exc}); copy not publishable: {e}")
                return
            await msg.ack()
        except (PublishFailed, *_CHANNEL_ERRORS):  # transient: RabbitMQ hands it back later
            await asyncio.sleep(REQUEUE_PAUSE)
            await _nack(msg, requeue=True)
        except Exception:  # the guard itself failed: hand it to RabbitMQ, never lose it
            log.exception("redelivery guard failed for message %s", msg.message_id)
            await asyncio.sleep(REQUEUE_PAUSE)
            if self.mode == "dead-letter":  # a `:dlq` has no dead-letter queue of its own
                await _nack(msg, requeue=True)
                return
            try:  # into the `:dlq`, declared first (RabbitMQ drops it into a missing one)
                await self._reject_to_dead_letter_queue(msg)
            except Exception:
                await _nack(msg, requeue=True)

    def _transient_log(self, text: str, *args: Any, extra: dict[str, Any]) -> None:
        """A publish RabbitMQ could not take for now: every in-flight message meets it at
        once, every REQUEUE_PAUSE, while RabbitMQ is down or blocked. One warning a second
        per queue; the rest at DEBUG."""
        now = time.monotonic()
        if now - self._last_transient_warning >= TRANSIENT_LOG_INTERVAL:
            self._last_transient_warning = now
            log.warning(text, *args, extra=extra)
        else:
            log.debug(text, *args, extra=extra)

    def _log_handler_error(self, msg: Incoming, exc: Exception, n: int) -> None:
        """One line per error; the traceback only for a message's first error, and at most
        one per TRACEBACK_INTERVAL (many poison messages at once must not flood the log)."""
        now = time.monotonic()
        verdict = "parking it" if n >= HANDLER_ERROR_LIMIT else "will handle it again later"
        text = "unexpected error handling message %s from %s (%d of %d): %s: %s; %s"
        args = (msg.message_id, self.queue_name, n, HANDLER_ERROR_LIMIT)
        if n == 1 and now - self._last_traceback >= TRACEBACK_INTERVAL:
            self._last_traceback = now
            log.error(text, *args, type(exc).__name__, exc, verdict, exc_info=exc)
        else:
            log.error(text, *args, type(exc).__name__, exc, verdict)

    async def _redeliver_later(
        self, msg: Incoming, extra_headers: dict[str, Any], delay: float
    ) -> None:
        """A copy of `msg` as it came (plus `extra_headers`) back into this queue after
        `delay`, through the delay queues retries use."""
        delay_ms = max(1, round(delay * 1000))
        await self.topology.ensure_delay_queue(delay_ms)
        headers = {**(msg.headers or {}), **extra_headers, DELAY_HEADER: str(delay_ms)}
        await self.publisher.publish(
            self.names.delay_exchange,
            self.queue_name,
            raw_message(msg.body, headers, msg.content_type, msg.message_id),
            mandatory=True,
        )

    async def _schedule_retry(self, event: CloudEvent, retries: int, delay: float) -> None:
        delay_ms = max(1, round(delay * 1000))
        await self.topology.ensure_delay_queue(delay_ms)
        await self.publisher.publish(
            self.names.delay_exchange,
            self.queue_name,
            to_message(event, {RETRIES_HEADER: retries, DELAY_HEADER: str(delay_ms)}),
            mandatory=True,
        )

    async def _park(self, msg: Incoming, why: str) -> None:
        """Keep a message we can never deliver where an operator can see it, exactly once."""
        log.error("parking message %s from %s: %s", msg.message_id, self.queue_name, why)
        try:
            try:
                copy = _raw_copy(msg, why, self.queue_name)
                await self.publisher.publish("", self.names.parked_queue, copy, mandatory=True)
            except UnpublishableMessage as e:
                # Its own headers are what does not fit: park the body with our headers only.
                log.warning("parking message %s without its headers: %s", msg.message_id, e)
                copy = _raw_copy(msg, why, self.queue_name, keep_headers=False)
                await self.publisher.publish("", self.names.parked_queue, copy, mandatory=True)
        except PublishFailed:
            await asyncio.sleep(REQUEUE_PAUSE)
            await _nack(msg, requeue=True)
            return
        self.stats.parked += 1
        metrics.parked.labels(self.queue_name).inc()
        await msg.ack()


def _raw_copy(msg: Incoming, why: str, queue: str, keep_headers: bool = True) -> Outgoing:
    headers = dict(msg.headers or {}) if keep_headers else {}
    headers["x-rabbitmesh-parked-from"] = queue
    headers["x-rabbitmesh-parked-reason"] = why[:1000]
    headers["x-rabbitmesh-parked-at"] = int(time.time())
    return raw_message(msg.body, headers, msg.content_type, msg.message_id)


def _log_final(
    event: CloudEvent, sub: Subscriber, attempt: int, outcome: Outcome, why: str, then: str
) -> None:
    log.warning(
        "delivery failed: event id=%s type=%s %s attempt=%d (%s, %s); %s",
        event.id,
        event.type,
        sub.name,
        attempt,
        outcome.error,
        why,
        then,
        extra=log_fields(event, sub, attempt),
    )


def _attempt(msg: Incoming) -> int:
    return _int((msg.headers or {}).get(RETRIES_HEADER)) + 1


def _int(v: Any) -> int:
    try:
        return int(v) if v is not None else 0
    except (TypeError, ValueError):
        return 0


async def _nack(msg: Incoming, requeue: bool) -> None:
    with contextlib.suppress(Exception):
        await msg.nack(requeue=requeue)


def _tag_order(held: Held) -> int:
    return held.delivery_tag or 0
