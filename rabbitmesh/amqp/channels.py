"""Channels that leave nothing behind on their connection once closed.

aiormq (7.2) hands out `Base.closing` as a fresh *observer* future on every access: it adds a
callback (`on_close`) to the resource's own closing future and lets go of it only when the
observer is done, which for a connection means when the connection closes. aio-pika (10.2)
reads a connection's `closing` twice for every channel (`aio_pika.abc.UnderlayChannel`):
`create` registers the channel's close handler (a OneShotCallback, with its task, event and
lock) on one observer, and `close` calls `remove_done_callback` on *another* fresh observer,
which removes nothing and is itself left behind. So every channel closed on a connection
that stays open left two pending observers on it (~1.4 KiB and ~12 objects for the second
alone: a future, two closures, their cells and contexts). Creating and deleting a Trigger
opens and closes its worker's channel on a pool connection that lives as long as
rabbitmesh: with only the first observer cancelled (by the worker), still ~1.4 KiB per
create + delete, for good (issue 13, tests/integration/test_control_plane_scale.py).

Cancelling an observer unregisters it (aiormq's `on_done`). `forget_closed` cancels the
observers of a connection's closing that nobody can be notified through any more, and
TidyRobustChannel calls it after each close of one of its channels.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
from aio_pika.tools import OneShotCallback

_ON_CLOSE = "closing.<locals>.on_close"
_ON_DONE = "closing.<locals>.on_done"


def _observer(callback: Any) -> asyncio.Future[Any] | None:
    """The observer future behind one of aiormq's `on_close` callbacks, else None."""
    if not getattr(callback, "__qualname__", "").endswith(_ON_CLOSE):
        return None
    names = callback.__code__.co_freevars
    if "future" not in names:
        return None
    observer = callback.__closure__[names.index("future")].cell_contents
    return observer if isinstance(observer, asyncio.Future) else None


def _spent(callback: Any) -> bool:
    """A callback on an observer that nothing needs any more: aiormq's own `on_done`, or a
    channel close handler that already ran (calling it again does nothing)."""
    if isinstance(callback, OneShotCallback):
        return callback.finished.is_set()
    return bool(getattr(callback, "__qualname__", "").endswith(_ON_DONE))


def forget_closed(underlay: Any) -> None:
    """Cancel what aio-pika left on the connection of a channel closed for good.

    `underlay` is the channel's UnderlayChannel, taken before it was closed. The connection's
    observers are walked from the newest: every one left with only spent callbacks is
    cancelled (the one `UnderlayChannel.close` just left is the newest of all), until the one
    that held this channel's close handler. Best effort: anything unexpected leaves things as
    they were."""
    with contextlib.suppress(Exception):
        handler = underlay.close_callback
        if not handler.finished.is_set():
            return  # not closed yet: cancelling would run its close handler now
        source = underlay.channel.connection._closing
        if source.done():
            return  # the connection is gone, and with it what it held
        for callback, _ in reversed(source._callbacks or ()):
            observer = _observer(callback)
            if observer is None or observer.done():
                continue
            callbacks = [cb for cb, _ in observer._callbacks or ()]
            if all(_spent(cb) for cb in callbacks):
                observer.cancel()
            if any(cb is handler for cb in callbacks):
                return


class TidyRobustChannel(aio_pika.RobustChannel):
    """aio-pika's robust channel that, once closed, forgets what it left on its connection."""

    async def close(self, exc: Any = None) -> None:
        underlay = self._channel
        try:
            await super().close(exc)
        finally:
            if underlay is not None:
                forget_closed(underlay)

    async def reopen(self) -> None:
        """Reopened after RabbitMQ closed the channel (a channel error: a passive declare of
        something missing, an inequivalent redeclare) or its connection: the old underlay's
        observer, holding its close handler, stays on the connection like a closed channel's.
        It is forgotten once that handler (which calls this) has finished."""
        underlay = self._channel
        await super().reopen()
        if underlay is not None and underlay is not self._channel:
            task = asyncio.create_task(_forget_when_finished(underlay))
            _FORGETTING.add(task)
            task.add_done_callback(_FORGETTING.discard)


_FORGETTING: set[asyncio.Task[None]] = set()


async def _forget_when_finished(underlay: Any) -> None:
    with contextlib.suppress(Exception):
        await underlay.close_callback.wait()
        forget_closed(underlay)
