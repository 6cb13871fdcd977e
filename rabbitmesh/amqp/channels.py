"""Channels that leave nothing behind on their connection once closed, at O(1) per channel.

aiormq (7.2) hands out `Base.closing` as a fresh *observer* future on every access: it adds a
callback (`on_close`) to the resource's own closing future and lets go of it only when the
observer is done, which for a connection means when the connection closes. aio-pika (10.2)
reads a connection's `closing` twice for every channel (`aio_pika.abc.UnderlayChannel`):
`create` registers the channel's close handler (a OneShotCallback, with its task, event and
lock) on one observer, and `close` calls `remove_done_callback` on *another* fresh observer,
which removes nothing and is itself left behind. So every channel closed on a connection
that stays open left two pending observers on it (~1.4 KiB; issue 13,
tests/integration/test_control_plane_scale.py).

The first fix cancelled those observers after each close, found by walking the connection's
callbacks from the newest back to the closed channel's: O(open channels) per close, O(n²)
for a stop of n Triggers (~60% of the CPU of a two-minute stop at 4,700; docs/benchmarks.md,
issue 13). Cancelling an observer also makes aiormq remove its `on_close` from the
connection's future (`remove_done_callback`: a scan of every callback there), so even
knowing the observer a close stayed O(n).

Now a TidyRobustChannel's underlay (TidyUnderlay) puts nothing per channel on the
connection's closing future: one observer per connection (CloseHandlers) holds the close
handlers of all its channels in a dict and calls them when the connection closes. A channel
adds its handler when it opens and takes it out when its own closing future resolves (a
close, or RabbitMQ closing the channel before aio-pika reopens it): both O(1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from itertools import chain
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import UnderlayChannel
from aio_pika.exceptions import ChannelInvalidStateError
from aio_pika.tools import OneShotCallback

log = logging.getLogger("rabbitmesh.amqp")

#: The attribute of an aiormq connection that holds its CloseHandlers.
_ATTR = "_rabbitmesh_close_handlers"
#: aio_pika.RobustChannel's "restored" event (`self.__restored`, name-mangled), which its
#: `_on_open` sets once everything is restored (TidyRobustChannel._on_open copies it).
_RESTORED_ATTR = "_RobustChannel__restored"


class CloseHandlers:
    """The close handlers of one aiormq connection's channels, behind one observer of its
    closing: what aio-pika puts there once per channel."""

    def __init__(self, connection: aiormq.abc.AbstractConnection) -> None:
        self.handlers: dict[OneShotCallback, None] = {}
        self.observer: asyncio.Future[Any] = connection.closing
        self.observer.add_done_callback(self._closed)

    @classmethod
    def of(cls, connection: aiormq.abc.AbstractConnection) -> CloseHandlers:
        handlers = getattr(connection, _ATTR, None)
        if not isinstance(handlers, CloseHandlers):
            handlers = cls(connection)
            setattr(connection, _ATTR, handlers)
        return handlers

    def add(self, handler: OneShotCallback) -> None:
        if self.observer.done():  # the connection is gone already: the handler runs now
            self.observer.add_done_callback(handler)
            return
        self.handlers[handler] = None

    def discard(self, handler: OneShotCallback) -> None:
        self.handlers.pop(handler, None)

    def _closed(self, observer: asyncio.Future[Any]) -> None:
        handlers, self.handlers = self.handlers, {}
        for handler in handlers:  # in the order the channels opened, as aiormq's would
            try:
                handler(observer)
            except Exception:  # one handler must not keep the others from running
                log.exception("close handler %r failed", handler)


@dataclasses.dataclass(frozen=True)
class TidyUnderlay(UnderlayChannel):
    """aio-pika's UnderlayChannel whose close handler waits on the connection's CloseHandlers
    instead of an observer of its own, and is taken out when the channel closes."""

    handlers: CloseHandlers | None = None

    @classmethod
    async def create(
        cls,
        connection: aiormq.abc.AbstractConnection,
        close_callback: Any,
        **kwargs: Any,
    ) -> TidyUnderlay:
        handler = OneShotCallback(close_callback)
        await connection.ready()
        handlers = CloseHandlers.of(connection)
        handlers.add(handler)
        try:
            channel = await connection.channel(**kwargs)
        except BaseException:
            handlers.discard(handler)
            raise
        closing = channel.closing  # resolves when the channel closes, whoever closes it
        closing.add_done_callback(handler)
        closing.add_done_callback(lambda _: handlers.discard(handler))
        return cls(channel=channel, close_callback=handler, handlers=handlers)

    async def close(self, exc: Any = None) -> Any:
        if self.close_callback.finished.is_set():
            return
        await self.channel.close(exc)
        await self.close_callback.wait()
        if self.handlers is not None:  # already out (the channel's closing ran), normally
            self.handlers.discard(self.close_callback)


class _QueueGone(Exception):
    """A queue worker's queue was found missing while its channel was restored, and left out."""


class TidyRobustChannel(aio_pika.RobustChannel):
    """aio-pika's robust channel on a TidyUnderlay: once closed, it leaves nothing on its
    connection, and opening or closing it costs the same however many channels are open.

    Queue workers tell it what to call when their consumer is lost (`on_broker_cancel`):
    RabbitMQ cancelled it (its queue deleted), or a restore after a reconnect found its queue
    gone (`_restore_queues`). Either way the queue leaves the restore list and the worker
    decides, instead of aio-pika's recovery or a failed restore of the whole connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: consumer tag -> what to call when RabbitMQ cancels it (`on_broker_cancel`)
        self._broker_cancel: dict[str, Callable[[], None]] = {}

    async def _open(self) -> None:
        # aio_pika.Channel._open (10.2.1) with TidyUnderlay for UnderlayChannel, opened again
        # while the restore finds a queue worker's queue gone (`_restore_queues`: each round
        # leaves one queue out, so this ends); tests/unit/test_tidy_channels.py fails when
        # aio-pika's changes.
        transport = self._connection.transport
        if transport is None:
            raise ChannelInvalidStateError("No active transport in channel")
        while True:
            await transport.ready()
            channel = await TidyUnderlay.create(
                transport.connection,
                self._on_close,
                publisher_confirms=self.publisher_confirms,
                on_return_raises=self.on_return_raises,
                channel_number=self._channel_number,
            )
            self._channel = channel
            try:
                await self._on_open()
            except BaseException as e:
                await channel.close(e)
                self._channel = None
                if isinstance(e, _QueueGone):
                    continue
                raise
            break
        if self._closed.done():
            self._closed = asyncio.get_running_loop().create_future()

    async def _on_open(self) -> None:
        # aio_pika.RobustChannel._on_open (10.2.1) with its queues restored by
        # `_restore_queues`; tests/unit/test_tidy_channels.py fails when aio-pika's changes.
        if not hasattr(self, "default_exchange"):
            await aio_pika.Channel._on_open(self)
        exchanges = self._exchanges.values()
        channel = await self.get_underlay_channel()
        channel.on_consumer_cancel_callbacks.add(self._on_consumer_cancel)
        await channel.basic_qos(
            prefetch_count=self._prefetch_count,
            prefetch_size=self._prefetch_size,
            global_=self._global_qos,
        )
        for exchange in exchanges:
            await exchange.restore()
        await self._restore_queues()
        if hasattr(self, "default_exchange"):
            self.default_exchange.channel = self
        getattr(self, _RESTORED_ATTR).set()

    async def _restore_queues(self) -> None:
        """What aio-pika's `RobustQueue.restore` does for each queue of the channel (declare,
        bind, consume), except that a queue that is gone (or an exchange it is bound to)
        leaves the restore instead of failing it.

        aio-pika restores a connection's channels all or nothing: a queue deleted while the
        connection was down (another replica reconciled the Trigger's delete meanwhile, or
        someone deleted it in RabbitMQ) failed its passive declare (NOT_FOUND), which closed
        the channel and failed the whole connection's restore, retried every second for as
        long as the queue stayed away: no worker on the connection received anything.

        Now such a queue leaves the restore list (`forget_queue`) and its worker is told as
        when RabbitMQ cancels its consumer (`on_broker_cancel`): it consumes again once the
        queue is back, or is stopped by the Trigger's delete. The channel (which RabbitMQ
        closed) opens again without it (`_open`). Every queue is declared before any is
        consumed, so a missing one is found before a neighbour took a delivery on a channel
        about to close. A queue deleted between its declare and its consume fails the consume
        instead: handled the same, only the neighbours consumed before it get their
        deliveries again (at least once, as after any reconnect). A queue that is no queue
        worker's (a console tail) is left out when an exchange it is bound to is gone,
        without anyone to tell; when it is missing itself, the restore fails and is retried,
        as in aio-pika (`_gone` says why).

        No probe and no extra round trip when nothing is missing; one more channel open per
        missing queue."""
        queues = tuple(chain(*self._queues.values()))
        for queue in queues:
            if not self._listed(queue):  # its worker left meanwhile
                continue
            try:
                await queue.declare()
            except aiormq.exceptions.ChannelNotFoundEntity as e:
                self._gone(queue, e)
                raise
            try:
                for (exchange, routing_key), kwargs in tuple(queue._bindings.items()):
                    await queue.bind(exchange, routing_key, **kwargs)
            except aiormq.exceptions.ChannelNotFoundEntity as e:
                self._gone(queue, e, exchange_gone=True)
                raise
        for queue in queues:
            if not self._listed(queue):
                continue
            try:
                for consumer_tag, kwargs in tuple(queue._consumers.items()):
                    await queue.consume(consumer_tag=consumer_tag, **kwargs)
            except aiormq.exceptions.ChannelNotFoundEntity as e:
                self._gone(queue, e)
                raise

    def _listed(self, queue: Any) -> bool:
        return queue in self._queues.get(queue.name, ())

    def _gone(self, queue: Any, error: Exception, exchange_gone: bool = False) -> None:
        """`queue` is missing (NOT_FOUND), or an exchange it is bound to, while the channel
        is restored. Raises _QueueGone (`_open` opens the channel again, without it): it
        leaves the restore list, and a queue worker consuming it is told, as by a consumer
        cancel. Also when it left the list while the restore was under way (its worker
        stopped).

        A queue nobody told us how to lose (not a queue worker's) is left out only when an
        exchange it is bound to is gone (`exchange_gone`: a console tail of a Broker deleted
        since): failing the restore instead, as aio-pika does, failed the whole
        connection's, every second, for ever, and every queue worker on it stopped (its
        in-flight events delivered again at each attempt, never acked); its consumer
        receives nothing more. When such a queue is missing itself, this returns and the
        restore fails and is retried, as in aio-pika: the resource store's stream is
        NOT_FOUND for a moment after a RabbitMQ restart, and its reader must come back,
        not be left out for good (tests/integration/test_store.py)."""
        if not self._listed(queue):
            raise _QueueGone(queue.name) from error
        tags = list(queue._consumers)
        workers = bool(tags) and all(tag in self._broker_cancel for tag in tags)
        if not workers and not exchange_gone:
            return
        (log.info if workers else log.warning)(
            "queue %s or an exchange it is bound to is gone: its channel is restored without "
            "it%s (%s)",
            queue.name,
            "" if workers else "; its consumer receives nothing more",
            error,
        )
        self.forget_queue(queue)
        for tag in tags:
            queue._consumers.pop(tag, None)  # never restored again under this tag
            callback = self._broker_cancel.pop(tag, None)
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                log.exception("consumer cancel handler for %s failed", tag)
        raise _QueueGone(queue.name) from error

    def forget_queue(self, queue: Any) -> None:
        """Stop restoring `queue` (declare, bind, consume) when this channel reopens.

        aio-pika keeps every queue declared on a robust channel, for as long as the channel
        lives, to declare it again after a reconnect. A shared consumer channel
        (amqp/pool.py) outlives its workers: without this it would keep every queue ever
        consumed on it, and after a reconnect re-declare one deleted since, which fails
        the channel's whole restore (every other worker on it stops receiving)."""
        queues = self._queues.get(queue.name)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._queues[queue.name]

    def queue_to_consume(self, name: str) -> aio_pika.RobustQueue:
        """The queue `name` as a passive declare returns it, without that round trip, and not
        on the restore list yet (`remember_queue`, once it is consumed).

        A queue worker's queue was declared a moment ago by the reconcile that starts the
        worker, over a topology channel; a passive declare here would only ask RabbitMQ
        again, once per worker per process (5,000 round trips each at a cold start with
        5,000 Triggers, issue 13). It proves nothing the consume does not: both fail with
        NOT_FOUND, which closes the channel either way. After a reconnect the restore
        declares it passively, as aio-pika would (`passive=True`)."""
        return aio_pika.RobustQueue(
            channel=self,
            name=name,
            durable=False,
            exclusive=False,
            auto_delete=False,
            arguments=None,
            passive=True,
        )

    def remember_queue(self, queue: Any) -> None:
        """Restore `queue` again when this channel reopens (undoes `forget_queue`)."""
        self._queues[queue.name].add(queue)

    def on_broker_cancel(self, consumer_tag: str, callback: Callable[[], None]) -> None:
        """Call `callback` instead of aio-pika's recovery when RabbitMQ cancels this consumer.

        RabbitMQ cancels a consumer when its queue is deleted: another replica, or another
        worker process of this one, reconciled a Trigger's delete first. aio-pika's recovery
        then walks every channel of the connection and reads each one's `closing`, which in
        aiormq 7.2 adds an observer to that channel's closing future for as long as the
        channel lives. Shared channels live as long as rabbitmesh: with 5,000 Triggers (313
        channels) and two worker processes, RSS grew ~59% over 10,000 writes (issue 13).
        The worker decides instead: it stops, or consumes again once the queue is back
        (dispatch/worker.py)."""
        self._broker_cancel[consumer_tag] = callback

    def forget_consumer(self, consumer_tag: str) -> None:
        self._broker_cancel.pop(consumer_tag, None)

    def _on_consumer_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        tag = frame.consumer_tag
        callback = self._broker_cancel.pop(tag, None) if tag is not None else None
        if tag is None or callback is None:  # not a queue worker's: aio-pika's own recovery
            super()._on_consumer_cancel(frame)
            return
        for queues in self._queues.values():
            for queue in queues:
                queue._consumers.pop(tag, None)  # aio-pika no longer restores it
        try:
            callback()
        except Exception:
            log.exception("consumer cancel handler for %s failed", tag)
