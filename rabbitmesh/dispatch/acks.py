"""Acks of one queue worker, sent once per event-loop iteration with `multiple` where it can.

A delivery is acked only once its outcome is durable (docs/delivery.md); that does not change
here. What changes is how the acks of deliveries that finished in the same loop iteration
travel: RabbitMQ numbers a channel's deliveries 1, 2, 3, ..., and `basic.ack` with
`multiple` settles every unsettled one up to a tag. So when the deliveries up to tag T are all
settled or finishing now, one frame acks them all; acks of deliveries that finished ahead of
an earlier one still in flight go one by one (never held back: a slow delivery must not keep
the others' acks, and with them the prefetch window, waiting).

The worker tells the batcher about every delivery it finished (`settled`), however it ended
(acked here, nacked, parked, handed back at its stop, ...): the contiguous run is only known
that way. State is per AMQP channel: after a reconnect the tags start again at 1 on a new
channel, and what was unacked on the old one comes back from RabbitMQ by itself.

Workers that share a channel (amqp/pool.py) share its batcher (`batcher_for`): the tags of a
channel are numbered across all its consumers, so only a batcher that hears of every
worker's deliveries may send a `multiple` ack; one worker's own would settle a neighbour's
delivery still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, Protocol

log = logging.getLogger("rabbitmesh.dispatch")


class Ackable(Protocol):
    """What the batcher needs of a message; aio-pika's also have `delivery_tag` and
    `channel` (the AMQP channel it came on), without which it is acked on its own."""

    async def ack(self, multiple: bool = False) -> None: ...


#: Longest a flush may wait to hand one channel's acks to aiormq. A connection that died with
#: aiormq's frame buffer full leaves writers waiting for ever; after this the channel's acks
#: are dropped (its unacked deliveries come back from RabbitMQ) and the lock is free again.
ACK_WRITE_TIMEOUT = 10.0


class _ChannelAcks:
    __slots__ = ("channel", "upto", "settled", "pending", "lock")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        # One flush at a time per channel: a flush suspended between its frames (aiormq's
        # frame buffer is full on a busy connection) must not be overtaken by the next
        # one's `multiple` ack past a tag it has yet to ack on its own (RabbitMQ: "unknown
        # delivery tag", the channel closes and every unacked delivery comes back). Per
        # channel, so a flush stuck on a dead connection holds back no other channel.
        self.lock = asyncio.Lock()
        #: Every delivery tag up to this one is settled (acked, nacked or rejected).
        self.upto = 0
        #: Settled tags above `upto`.
        self.settled: set[int] = set()
        #: Tags to ack in the next flush.
        self.pending: list[int] = []


def _has_channel(msg: Ackable) -> bool:
    """An open AMQP channel to ack on (aio-pika's `channel` raises once it is closed)."""
    try:
        return getattr(msg, "channel", None) is not None
    except Exception:
        return False


class AckBatcher:
    def __init__(self) -> None:
        self._channels: dict[int, _ChannelAcks] = {}
        self._scheduled = False
        self._flushing: set[asyncio.Task[None]] = set()

    def _state(self, msg: Ackable) -> _ChannelAcks | None:
        try:
            channel = msg.channel  # type: ignore[attr-defined]
        except Exception:  # the channel is closed: RabbitMQ redelivers what was unacked
            return None
        state = self._channels.get(id(channel))
        if state is None or state.channel is not channel:
            state = self._channels[id(channel)] = _ChannelAcks(channel)
        return state

    async def ack(self, msg: Ackable) -> None:
        """Ack `msg` at the end of this loop iteration (its outcome is already durable)."""
        tag = getattr(msg, "delivery_tag", None)
        if tag is None or not _has_channel(msg):
            await msg.ack()  # not an AMQP delivery as aio-pika hands them (or it is closed)
            return
        state = self._state(msg)
        if state is None:
            return
        state.pending.append(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def settled(self, msg: Ackable) -> None:
        """`msg` is finished, whichever way: its tag no longer holds back `multiple`."""
        tag = getattr(msg, "delivery_tag", None)
        if tag is None or not _has_channel(msg):
            return
        state = self._state(msg)
        if state is None or tag is None or tag <= state.upto:
            return
        state.settled.add(tag)
        while state.upto + 1 in state.settled:  # usually a step or two
            state.upto += 1
            state.settled.discard(state.upto)

    def _flush_soon(self) -> None:
        self._scheduled = False
        task = asyncio.create_task(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self, wait: bool = False) -> None:
        """Send every pending ack now; with `wait`, return once they are written (not only
        queued in aiormq, where closing the connection would drop them)."""
        due = []
        for key, state in list(self._channels.items()):
            if state.channel.is_closed:
                self._forget(key, state)
            elif state.pending:
                due.append(self._flush_one(key, state, wait))
        if len(due) == 1:  # the usual case: one channel per worker
            await due[0]
        elif due:  # after a reconnect: a stuck old channel must not hold back the new one
            await asyncio.gather(*due)

    async def _flush_one(self, key: int, state: _ChannelAcks, wait: bool) -> None:
        try:
            async with asyncio.timeout(ACK_WRITE_TIMEOUT), state.lock:
                await self._flush_channel(state, wait)
        except Exception as e:  # the channel went (or hangs): its deliveries come back
            # when it closes (a dead connection: at the heartbeat); on a channel that is
            # only slow they stay unacked until then, never acked wrongly.
            log.debug("acks on a closed channel dropped (%r); RabbitMQ redelivers", e)
            self._forget(key, state)

    def _forget(self, key: int, state: _ChannelAcks) -> None:
        if self._channels.get(key) is state:
            del self._channels[key]

    async def _flush_channel(self, state: _ChannelAcks, wait: bool) -> None:
        """One channel's pending acks; called with its lock held."""
        if not state.pending:
            return  # a flush that waited for the lock found them sent
        tags, state.pending = sorted(state.pending), []
        # `multiple` up to the end of the contiguous settled run, when it covers pending
        # tags (`settled` has been or is about to be called for every pending tag, so the
        # pending ones count as settled). Its tag must itself be unacked (RabbitMQ closes
        # the channel on an "unknown delivery tag"): the highest pending one in the run.
        top = state.upto
        pending = set(tags)
        while top + 1 in state.settled or top + 1 in pending:
            top += 1
        covered = [t for t in tags if t <= top]
        frames: list[tuple[int, bool]] = []
        if covered:
            frames.append((covered[-1], True))
        frames += [(t, False) for t in tags if t > top]
        for t in tags:
            if t > state.upto:
                state.settled.add(t)
        while state.upto + 1 in state.settled:
            state.upto += 1
            state.settled.discard(state.upto)
        for tag, multiple in frames:
            await state.channel.basic_ack(tag, multiple=multiple, wait=wait)

    async def drain(self) -> None:
        """Send what is pending and wait for flushes under way (before a channel closes)."""
        self._scheduled = False
        await self.flush(wait=True)  # bounded per channel by ACK_WRITE_TIMEOUT
        if self._flushing:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(ACK_WRITE_TIMEOUT):
                    await asyncio.gather(*self._flushing, return_exceptions=True)


#: The batcher of each (robust) channel that queue workers consume on.
_BATCHERS: weakref.WeakKeyDictionary[Any, AckBatcher] = weakref.WeakKeyDictionary()


def batcher_for(channel: Any) -> AckBatcher:
    """The one AckBatcher of the workers consuming on `channel`."""
    batcher = _BATCHERS.get(channel)
    if batcher is None:
        batcher = _BATCHERS[channel] = AckBatcher()
    return batcher
