"""Per-key ordered delivery (docs/ordering.md): a splitter and one worker per partition.

The promise: for two events with the same `partitionkey`, the second's first delivery attempt
starts only after the first succeeded or was dead-lettered, retries included; also across a
restart or SIGKILL of rabbitmesh and with several replicas.

How:
- The trigger's (or subscription's) queue stays what it is: bound to the broker, the entry
  point of replays and redrives. A `Splitter` consumes it as the only consumer (an exclusive
  basic.consume; the other replicas stand by and retry) and moves every message, in queue
  order, into partition `crc32(partitionkey) % N`, `{queue}:p{i}`. A message is acked only
  after its copy was confirmed, so a crash can duplicate but never lose or reorder. A
  reconnect does not restore that consume (it would be refused once a standby took over,
  and fail the shared connection's restore): the splitter consumes again itself.
- Each partition is a queue with `x-single-active-consumer`: however many replicas consume
  it, RabbitMQ delivers to one at a time, and hands over to the next only when that one's
  channel is gone, with the unacked message back at the head.
- `OrderedWorker` delivers a partition one message at a time (prefetch 1) and holds retries
  in-process (the partition waits through the backoff) instead of sending them to a delay
  queue, where a later event of the same key would overtake them. It acks only after success
  or dead-letter; so after a SIGKILL the next consumer starts with the same event.

No RabbitMQ plugin is needed (the consistent-hash exchange would be one): hashing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Mapping
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.messages import raw_message
from rabbitmesh.amqp.pool import ConsumerPool
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent, decode_amqp
from rabbitmesh.dispatch.decision import Action, Decision, decide
from rabbitmesh.dispatch.sender import Outcome
from rabbitmesh.dispatch.worker import Incoming, QueueWorker

log = logging.getLogger("rabbitmesh.ordered")

#: The CloudEvent extension that names the ordering key (the Kafka broker's name for it).
KEY_ATTRIBUTE = "partitionkey"
_KEY_HEADERS = ("ce-partitionkey", "cloudEvents:partitionkey", "cloudEvents_partitionkey")

#: Messages the splitter takes at once; each is acked once its copy is confirmed.
SPLIT_PREFETCH = 256
#: How often a standby splitter asks again for the entry queue another replica holds.
STANDBY_RETRY = 1.0
#: Pause after a batch RabbitMQ did not confirm, before it is taken again.
SPLIT_REQUEUE_PAUSE = 1.0


def partition_of(key: str | None, partitions: int, fallback: int) -> int:
    """The partition of a key: stable across processes and versions (crc32, not hash()).

    Never raises: a key with lone surrogates (from JSON escapes, or bytes that were not
    UTF-8, see key_of) is hashed with them encoded as they are (`surrogatepass`); a valid
    key hashes as its UTF-8 bytes, as always."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def key_of(headers: Mapping[str, Any], body: bytes, content_type: str | None) -> str | None:
    """The message's `partitionkey`, from its headers (binary mode) or, for a structured
    message, its decoded attributes; None when it has none (no order promise)."""
    for name in _KEY_HEADERS:
        value = headers.get(name)
        if value is not None:
            # An AMQP long string that is not UTF-8 arrives as bytes: any bytes are a key
            # (surrogateescape keeps them distinct); raising here wedged the whole trigger.
            if isinstance(value, bytes | bytearray):
                return bytes(value).decode("utf-8", "surrogateescape")
            return str(value)
    if content_type and content_type.startswith("application/cloudevents"):
        try:
            value = decode_amqp(dict(headers), body, content_type).attributes.get(KEY_ATTRIBUTE)
        except (InvalidEvent, RecursionError, ValueError, TypeError):
            return None
        return None if value is None else str(value)
    return None


class ConsumerLost(Exception):
    """The splitter's consumer of its queue is gone with its channel: RabbitMQ took back
    every message it had not acked."""


class Splitter:
    """Moves a queue's messages, in order, into its partition queues; one replica at a time."""

    def __init__(
        self,
        *,
        queue: str,
        partitions: list[str],
        consumer: AmqpClient | ConsumerPool,
        publisher: AmqpClient,
    ) -> None:
        self.queue = queue
        self.partitions = partitions
        self.consumer = consumer
        self.publisher = publisher
        self.moved = 0
        #: True while this replica holds the queue (the others stand by).
        self.active = False
        self._task: asyncio.Task[None] | None = None
        self._channel: AbstractRobustChannel | None = None
        #: The underlying channel and consumer tag of the consume this replica holds.
        self._held: tuple[aiormq.Channel, str] | None = None
        self._round_robin = 0
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"split {self.queue}")

    async def stop(self, timeout: float) -> None:
        """Finish the batch in hand (bounded by `timeout`), so a graceful stop duplicates
        nothing; then hand the rest back."""
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close()

    async def _close(self) -> None:
        ch, self._channel, self.active, self._held = self._channel, None, False, None
        if ch is not None:
            with contextlib.suppress(Exception):
                await ch.close()

    async def _run(self) -> None:
        while not self._stopping:
            inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
            lost = asyncio.Event()
            try:
                await self._consume(inbox, lost)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await self._close()
                log.debug("splitter for %s stands by (%s)", self.queue, e)
                await asyncio.sleep(STANDBY_RETRY)
                continue
            self.active = not lost.is_set()
            log.info("splitting %s into %d partitions", self.queue, len(self.partitions))
            try:
                await self._move(inbox, lost)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the channel went away: consume again
                log.warning("splitter for %s stopped (%s); consuming again", self.queue, e)
            if lost.is_set() and not self._stopping:
                log.info("splitter for %s lost the queue; consuming again", self.queue)
            await self._close()
            await asyncio.sleep(STANDBY_RETRY)

    async def _consume(
        self, inbox: asyncio.Queue[AbstractIncomingMessage | None], lost: asyncio.Event
    ) -> None:
        """Consume the queue as its only consumer, into `inbox`; `lost` is set (and None put
        into `inbox`) once that consumer's channel closed.

        Exclusive: a second replica's consume is refused; it stands by and retries, and takes
        over once this one's channel is gone. Neither the queue nor the consume is robust,
        aio-pika restores none of them: the channel is on a connection other queues' workers
        share, and aio-pika restores a connection's channels and consumers all or nothing.
        Once a standby held the queue, the restored exclusive consume was refused
        (ACCESS_REFUSED), aio-pika dropped the connection and tried again every second, and
        every worker on it stalled until this splitter closed its channel (up to a publish
        timeout when a copy was in flight; test_splitter, F4). Instead the splitter sees its
        consumer gone and comes back here: consuming again, or standing by."""
        channel = self._channel = await self.consumer.channel(prefetch=SPLIT_PREFETCH)

        def gone(*_: Any) -> None:
            if not lost.is_set():
                lost.set()
                if self._channel is channel:  # not a channel given up on before
                    self.active = False
                inbox.put_nowait(None)  # wakes _move

        # aio-pika calls a robust channel's close callbacks whenever its underlying channel
        # closes (a channel error, the connection lost), before any reopen; the consumer
        # lives and dies with that underlying channel.
        channel.close_callbacks.add(gone)
        queue = await channel.declare_queue(self.queue, passive=True, robust=False)
        tag = await queue.consume(inbox.put, exclusive=True, robust=False)
        # aiormq's Channel: its `consumers`, the abstract one not.
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        self._held = (underlay, tag)
        if not self._holds():
            gone()

    def _holds(self) -> bool:
        """This replica's consumer is still there (RabbitMQ cancels it, without closing the
        channel, when the queue is deleted; a close is also seen by `gone` at once)."""
        if self._held is None:
            return False
        underlay, tag = self._held
        return not underlay.is_closed and tag in underlay.consumers

    async def _move(
        self, inbox: asyncio.Queue[AbstractIncomingMessage | None], lost: asyncio.Event
    ) -> None:
        while not self._stopping and not lost.is_set():
            try:
                first = await asyncio.wait_for(inbox.get(), STANDBY_RETRY)
            except TimeoutError:
                if not self._holds():
                    return
                continue
            batch = [first]
            while not inbox.empty() and len(batch) < SPLIT_PREFETCH:
                batch.append(inbox.get_nowait())
            if lost.is_set():
                # Delivered on a channel that is gone: RabbitMQ has them back, in order.
                return
            msgs = [m for m in batch if m is not None]
            lanes: dict[int, list[AbstractIncomingMessage]] = {}
            for msg in msgs:
                headers = msg.headers or {}
                self._round_robin += 1
                try:
                    key = key_of(headers, msg.body, msg.content_type)
                    p = partition_of(key, len(self.partitions), self._round_robin)
                except Exception as e:  # never let one message stop the splitter for ever
                    log.warning("splitter for %s: unusable partitionkey (%s)", self.queue, e)
                    p = partition_of(None, len(self.partitions), self._round_robin)
                lanes.setdefault(p, []).append(msg)
            results = await asyncio.gather(
                *(self._move_lane(self.partitions[p], ms, lost) for p, ms in lanes.items()),
                return_exceptions=True,
            )
            moved = sum(1 for msg in msgs if msg.processed)
            self.moved += moved
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed and not lost.is_set():
                # The failed lanes' messages from the first unconfirmed one on go back (the
                # copy being published may be in its partition already: a redelivery
                # duplicates it, at least once, but keeps the order). By closing the channel:
                # RabbitMQ requeues all its unacked messages at once, in queue order, where
                # nacks one by one would each be redelivered at once, ahead of the next.
                log.warning(
                    "splitter for %s: %d messages not confirmed (%s); handed back",
                    self.queue,
                    len(msgs) - moved,
                    failed[0],
                )
                await asyncio.sleep(SPLIT_REQUEUE_PAUSE)
                return

    async def _move_lane(
        self, partition: str, msgs: list[AbstractIncomingMessage], lost: asyncio.Event
    ) -> None:
        """One partition's share of a batch, one confirm after another: their order holds.

        Each message is acked as soon as its copy is confirmed, not the batch at its end: a
        rabbitmesh killed mid-batch then duplicates at most the one copy in flight per lane
        (a batch of 15 confirmed copies, all handed back by a SIGKILL before the batch's
        ack, came out twice). Once the consumer is lost, RabbitMQ has the rest back (and a
        standby may be moving them already): no further copy is published."""
        for msg in msgs:
            if lost.is_set():
                raise ConsumerLost(self.queue)
            copy = raw_message(msg.body, dict(msg.headers or {}), msg.content_type, msg.message_id)
            await self.publisher.publish("", partition, copy, mandatory=True)
            await msg.ack()


class OrderedWorker(QueueWorker):
    """Delivers one partition strictly in order: one message at a time, retries in-process.

    Dead letters go to the parent queue's `:dlq` or store (every partition of a trigger shares
    them), so they look the same whether the trigger is ordered or not.
    """

    def __init__(self, *, parent_queue: str, **kwargs: Any) -> None:
        super().__init__(prefetch=1, concurrency=1, **kwargs)
        self.parent_queue = parent_queue

    async def _retry(
        self, msg: Incoming, event: CloudEvent, outcome: Outcome, retries: int, decision: Decision
    ) -> None:
        """The partition waits: backoff and retries happen here, holding the message unacked,
        so nothing behind it (of the same key) can start. A crash mid-wait hands the same
        message to the next consumer, first in line (with a fresh retry budget)."""
        while decision.action is Action.RETRY and not self._stopping:
            sub = self.subscriber
            log.info(
                "delivery failed: event id=%s %s attempt=%d (%s); retry in %.3fs (ordered)",
                event.id,
                sub.name,
                retries + 1,
                outcome.error,
                decision.delay,
            )
            self.stats.retried += 1
            await asyncio.sleep(decision.delay)
            sub = self.subscriber  # the resource may have changed meanwhile
            retries = decision.retries
            outbound = without(event, sub.drop_attributes)
            outcome = await self._send(sub, outbound, structured=sub.policy.format == "json")
            decision = decide(outcome, retries, sub.policy, replies=sub.on_reply is not None)
            if not outcome.ok:
                self.stats.last_error = outcome.error
        if decision.action is Action.RETRY:  # stopping: hand it back, first in line
            await _nack(msg)
        elif decision.action in (Action.ACK, Action.REPLY):
            await self._succeeded(msg, event, outcome, retries)
        else:
            await self._final(msg, event, outcome, retries, decision)

    def _dead_letter_parent(self) -> str:
        return self.parent_queue


def without(event: CloudEvent, attributes: tuple[str, ...]) -> CloudEvent:
    """The event as the subscriber gets it (the worker leaves out `drop_attributes`)."""
    if not any(a in event.attributes for a in attributes):
        return event
    kept = {k: v for k, v in event.attributes.items() if k not in attributes}
    return CloudEvent(kept, event.data, event.trace)


async def _nack(msg: Incoming) -> None:
    with contextlib.suppress(Exception):
        await msg.nack(requeue=True)
