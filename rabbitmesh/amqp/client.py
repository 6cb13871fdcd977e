"""Connections to RabbitMQ that come back on their own, and publishing with confirms.

aio-pika's robust connection re-opens channels and re-declares what was declared through it
after RabbitMQ restarts; this wrapper adds the first connection with logged backoff (an
unreachable RabbitMQ at start is retried, not a crash), a `connected` flag for readiness and
503s, and a publish that waits for its own confirm with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from typing import Any, Protocol, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from pamqp.commands import Basic

from rabbitmesh.amqp.coalesce import CoalescingRobustConnection
from rabbitmesh.amqp.limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    UnpublishableMessage,
    check_publishable,
)

log = logging.getLogger("rabbitmesh.amqp")


class MessageLike(Protocol):
    """An aio_pika.Message or rabbitmesh.amqp.messages.Outgoing."""

    @property
    def body(self) -> bytes: ...

    @property
    def properties(self) -> Basic.Properties: ...


class PublishFailed(Exception):
    """RabbitMQ did not confirm a publish (down, nacked, unroutable or too slow): transient.

    A message RabbitMQ could never take raises `UnpublishableMessage` instead (permanent)."""


__all__ = ["AmqpClient", "PublishFailed", "UnpublishableMessage", "BLOCKED_MESSAGE"]


#: How often the publish channel is checked, and how long it may stay closed before the
#: connection is reset (a reopen takes milliseconds).
WATCHDOG_INTERVAL = 1.0
CHANNEL_LOST_AFTER = 5.0
#: Publishes given up on (timed out) that RabbitMQ has not answered yet, beyond which new
#: publishes fail at once instead of queueing behind them.
MAX_ABANDONED = 10_000

BLOCKED_MESSAGE = "RabbitMQ is blocking publishers (a memory or disk alarm)"
#: Where aiormq's Connection keeps its "not blocked" event (a name-mangled private field).
_UNBLOCKED_ATTR = "_Connection__connection_unblocked"


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class AmqpClient:
    """One robust connection with a confirm channel for publishing."""

    def __init__(
        self,
        url: str,
        name: str,
        publish_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.url = url
        self.name = name
        self.publish_timeout = publish_timeout
        self.ssl_context = ssl_context  # amqps:// only (Settings.amqp_ssl_context)
        self.max_message_size = max_message_size  # RabbitMQ's max_message_size
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._closing = False
        #: Publishes RabbitMQ has not answered yet, by AMQP message id (see `publish`).
        self._in_flight: dict[str, asyncio.Future[Any]] = {}
        #: Publishes whose caller gave up (timed out) while RabbitMQ still owes an answer.
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Connect, retrying with capped exponential backoff until it works or we close."""
        delay = 0.5
        while not self._closing:
            try:
                self.connection = await aio_pika.connect_robust(
                    self.url,
                    ssl_context=self.ssl_context,
                    reconnect_interval=1.0,
                    client_properties={"connection_name": f"rabbitmesh-{self.name}"},
                    # One socket write per loop iteration (rabbitmesh/amqp/coalesce.py).
                    connection_class=CoalescingRobustConnection,
                )
                break
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
                log.warning(
                    "RabbitMQ at %s not reachable (%s); retrying in %.1fs",
                    redact(self.url),
                    e or type(e).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if self.connection is None:
            return
        self.connection.close_callbacks.add(self._on_close)
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self._publish_channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._watchdog = asyncio.create_task(self._watch_publish_channel())
        log.info("connected to RabbitMQ at %s (%s)", redact(self.url), self.name)

    def _on_close(self, _conn: Any, exc: BaseException | None = None) -> None:
        if not self._closing:
            log.warning("RabbitMQ connection %s lost (%s); reconnecting", self.name, exc)

    def _on_reconnect(self, _conn: Any) -> None:
        log.info("RabbitMQ connection %s restored", self.name)

    @property
    def connected(self) -> bool:
        """The connection is up and, once opened, so is the publish channel: a closed publish
        channel makes every publish wait for its timeout, so readiness must say so."""
        c = self.connection
        if c is None or c.is_closed or not c.connected.is_set():
            return False
        ch = self._publish_channel
        return ch is None or not ch.is_closed

    async def _watch_publish_channel(self) -> None:
        """Reset the connection when the publish channel stays closed.

        aio-pika reopens a channel RabbitMQ closed, but when a channel dies on the client side
        (its aiormq reader failing) the connection's reader can hang on the dead channel's
        full frame queue: no reconnect ever happens. Closing the underlying aiormq connection
        lets the robust connection reconnect and reopen everything."""
        closed_since: float | None = None
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            c, ch = self.connection, self._publish_channel
            if c is None or ch is None or c.is_closed or not ch.is_closed:
                closed_since = None
                continue
            if closed_since is None:
                closed_since = loop.time()
                continue
            if loop.time() - closed_since < CHANNEL_LOST_AFTER:
                continue
            closed_since = None
            underlay = getattr(getattr(c, "transport", None), "connection", None)
            if underlay is None or getattr(c, "reconnecting", False):
                continue
            log.warning(
                "RabbitMQ publish channel of %s closed for %.0fs; resetting the connection",
                self.name,
                CHANNEL_LOST_AFTER,
            )
            try:
                async with asyncio.timeout(30):
                    await underlay.close(ConnectionResetError("publish channel lost"))
            except Exception as e:  # reset is best effort; the next round tries again
                log.warning("resetting RabbitMQ connection %s failed: %r", self.name, e)

    @property
    def frame_max(self) -> int:
        """The frame size negotiated with RabbitMQ (0 before the first connection)."""
        c = self.connection
        transport = getattr(c, "transport", None) if c is not None else None
        tune = getattr(getattr(transport, "connection", None), "connection_tune", None)
        return int(getattr(tune, "frame_max", 0) or 0)

    @property
    def blocked(self) -> bool:
        """RabbitMQ sent connection.blocked: a memory or disk alarm stops it reading what this
        connection publishes, so a publish would only wait for its timeout. aiormq tracks the
        state but offers no public accessor; tests/integration/test_amqp_client.py checks the
        attribute is there, so an aiormq upgrade cannot silently turn this into a timeout."""
        c = self.connection
        transport = getattr(c, "transport", None) if c is not None else None
        underlay = getattr(transport, "connection", None)
        unblocked = getattr(underlay, _UNBLOCKED_ATTR, None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    async def channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        assert self.connection is not None, "connect() first"
        ch = await self.connection.channel()
        if prefetch is not None:
            await ch.set_qos(prefetch_count=prefetch)
        return ch

    async def lease(self, prefetch: int | None) -> AbstractRobustChannel:
        """A queue worker's channel, as ConsumerPool.lease hands out; here one of its own."""
        return await self.channel(prefetch)

    async def release(self, channel: AbstractRobustChannel) -> None:
        """The worker is done with the channel `lease` gave it."""
        with contextlib.suppress(Exception):
            await channel.close()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: MessageLike,
        *,
        mandatory: bool = False,
        unroutable_ok: bool = False,
    ) -> bool:
        """Publish and wait for this message's own confirm; raise PublishFailed otherwise.

        With `mandatory`, a message no queue takes comes back from RabbitMQ: that raises
        PublishFailed, or, with `unroutable_ok`, returns False (a broker event no trigger
        wants: confirmed, and dropped as Knative drops it). True means a queue has it.

        A message RabbitMQ would refuse by closing the connection or the shared channel (a
        content header over the negotiated frame size, an over-long short string, a body over
        `max_message_size`) raises UnpublishableMessage before anything is sent: no input may
        close what every publisher shares.
        """
        check_publishable(
            message.properties, self.frame_max, len(message.body), self.max_message_size
        )
        ch = self._publish_channel
        if ch is None or not self.connected:
            raise PublishFailed("not connected to RabbitMQ")
        if self.blocked:
            raise PublishFailed(BLOCKED_MESSAGE)
        if len(self._abandoned) >= MAX_ABANDONED:
            # RabbitMQ is far behind; queueing more only grows memory. Fail fast (503) until
            # it catches up: overload recovers by itself.
            raise PublishFailed(
                "publisher overloaded: RabbitMQ has not confirmed earlier publishes"
            )
        message_id = message.properties.message_id
        task: asyncio.Future[Any] | None = None
        try:
            async with asyncio.timeout(self.publish_timeout):  # no wait_for task
                # aiormq matches a returned message to its publish by message id (the event
                # id, chosen by the sender): two in flight with one id would get each other's
                # return, and a return for a cancelled one kills the channel's reader. One
                # publish per id at a time keeps the match right.
                while (
                    message_id is not None
                    and (prev := self._in_flight.get(message_id)) is not None
                    and not prev.done()
                ):
                    await asyncio.wait({prev})
                # aiormq's Channel: its `basic_publish` takes `wait`, the abstract one not.
                underlay = cast(aiormq.Channel, await ch.get_underlay_channel())
                task = asyncio.ensure_future(
                    underlay.basic_publish(
                        message.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=message.properties,
                        mandatory=mandatory,
                        # Queue the frames and let go of the channel: waiting for the socket
                        # to drain holds the channel lock for several loop iterations per
                        # publish, which serialised every publish when the loop was busy.
                        wait=False,
                    )
                )
                if message_id is not None:
                    self._in_flight[message_id] = task
                task.add_done_callback(functools.partial(self._publish_done, message_id))
                # Shielded: cancelling aiormq's publish after its frames were queued cancels
                # its confirm future, and a Basic.Return arriving for that message then fails
                # on it (InvalidStateError) and kills the channel. The task ends when RabbitMQ
                # answers or the channel closes (aiormq rejects every pending confirm).
                confirm = await asyncio.shield(task)
        except TimeoutError:
            raise PublishFailed("publish not confirmed in time") from None
        except aiormq.exceptions.PublishError as e:
            if unroutable_ok:
                return False
            raise PublishFailed(f"no queue took the message: {e}") from None
        except Exception as e:  # any channel/connection error means "not accepted"
            raise PublishFailed(f"{type(e).__name__}: {e}") from None
        finally:
            if task is not None and not task.done():  # timed out or cancelled: given up on
                self._abandoned.add(task)
        if not isinstance(confirm, Basic.Ack):
            raise PublishFailed(f"RabbitMQ did not confirm ({type(confirm).__name__})")
        return True

    def _publish_done(self, message_id: str | None, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if message_id is not None and self._in_flight.get(message_id) is task:
            del self._in_flight[message_id]
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned publish's failure is not an error

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.connection is not None:
            await self.connection.close()
