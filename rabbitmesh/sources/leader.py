"""One active runner per source across replicas: leases held through RabbitMQ.

Each source has a lease queue, `{prefix}.source.{kind}.{namespace}.{name}:lease`, declared
with `x-single-active-consumer`. Every replica that runs sources consumes it (prefetch 1), and
RabbitMQ delivers only to the active consumer. The queue holds a *token* message: whoever
holds the token unacked is the leader and runs the source; the others wait.

- Getting there: each replica publishes a token when it subscribes. `x-max-length: 1` (which
  counts ready messages only) keeps at most one spare token besides the held one; spares are
  harmless, since with prefetch 1 the leader never holds two.
- Handing over: when the leader's channel or connection closes (SIGTERM, SIGKILL: the kernel
  closes the socket and RabbitMQ sees it at once; a network partition: within the heartbeat,
  10 s), RabbitMQ requeues the token and makes the next consumer active, which gets it: a
  failover takes milliseconds after RabbitMQ notices. The old leader stops its work the
  moment its own connection drops, before it reconnects and competes again.
- Staying there: a token held longer than RabbitMQ's `consumer_timeout` (30 min by default)
  would close the channel, so the leader hands it back to itself every few minutes
  (`basic.nack` with requeue: the single active consumer gets it straight back).
- The queue is auto-delete: it goes when the last replica stops consuming (source deleted or
  every replica stopped). Every replica checks it every few seconds: a queue deleted from under
  them (or lost with a RabbitMQ node) stops the leader's work, and is declared again (with a
  new token) by the replicas competing anew.

There is a window, in a network partition only, where the old leader has not noticed yet and
the new one already runs: at most one heartbeat interval. Sources make that harmless or
visible: a PingSource records each tick before sending it (rabbitmesh/sources/ping.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pamqp.common import FieldTable
from yarl import URL

from rabbitmesh.amqp.client import redact

log = logging.getLogger("rabbitmesh.sources")

#: Seconds between AMQP heartbeats on the lease connection: how fast a partitioned leader
#: and RabbitMQ notice each other's absence (about three times this, at worst).
HEARTBEAT = 10
#: How often the leader hands its token back to itself (well under consumer_timeout).
REFRESH_SECONDS = 240.0
#: How often a standby checks that the lease queue still exists.
CHECK_SECONDS = 5.0

LEASE_ARGUMENTS: FieldTable = {"x-single-active-consumer": True, "x-max-length": 1}


class Elector:
    """This replica's AMQP connection for leases (apart from the data-plane ones, so a busy
    publisher never delays a handover), reconnected with backoff."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context  # amqps:// (the data-plane connections' context)
        parsed = URL(url)
        if "heartbeat" not in parsed.query:
            parsed = parsed.update_query(heartbeat=HEARTBEAT)
        self.url = parsed
        self.connection: AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name="source leases")

    async def connected(self) -> AbstractConnection:
        await self._ready.wait()
        assert self.connection is not None
        return self.connection

    async def _keep_connected(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                conn = await aio_pika.connect(
                    self.url,
                    ssl_context=self.ssl_context,
                    timeout=10,
                    client_properties={"connection_name": "rabbitmesh-leases"},
                )
            except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as e:
                log.warning("leases: RabbitMQ at %s not reachable (%s)", redact(str(self.url)), e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            closed = asyncio.Event()

            def on_close(*_: object, closed: asyncio.Event = closed) -> None:
                self._ready.clear()  # at once: no lease may start on a closed connection
                closed.set()

            conn.close_callbacks.add(on_close)
            self.connection = conn
            self._ready.set()
            await closed.wait()
            if not self._closing:
                log.warning("leases: RabbitMQ connection lost; every lease held here is released")
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connection is not None and not self.connection.is_closed:
            await self.connection.close()


Work = Callable[[], Awaitable[None]]


class Lease:
    """The right to run one source. `hold(work)` runs `work` while this replica leads."""

    def __init__(self, elector: Elector, queue: str, what: str) -> None:
        self.elector = elector
        self.queue = queue
        self.what = what
        self.leading = False
        #: Called with True/False when this replica becomes or stops being the leader.
        self.on_change: Callable[[bool], None] | None = None

    async def hold(self, work: Work) -> None:
        """Compete for the lease for ever (until cancelled); run `work` while holding it."""
        delay = 0.5
        while True:
            conn = await self.elector.connected()
            try:
                await self._term(conn, work)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the channel or connection went; compete again
                log.info("%s: lease interrupted (%s: %s)", self.what, type(e).__name__, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _term(self, conn: AbstractConnection, work: Work) -> None:
        """One subscription: wait for the token, lead until the channel goes."""
        channel = await conn.channel(publisher_confirms=False)
        lost = asyncio.Event()
        channel.close_callbacks.add(lambda *_: lost.set())
        tokens: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_token(message: AbstractIncomingMessage) -> None:
            tokens.put_nowait(message)

        running: asyncio.Task[None] | None = None
        try:
            await channel.set_qos(prefetch_count=1)
            queue = await channel.declare_queue(
                self.queue, durable=False, auto_delete=True, arguments=LEASE_ARGUMENTS
            )
            await queue.consume(on_token, no_ack=False)
            await channel.default_exchange.publish(
                aio_pika.Message(b"lease"), routing_key=self.queue
            )
            token = await self._wait_token(channel, tokens, lost)
            if token is None:
                return
            self._set_leading(True)
            running = asyncio.create_task(self._run(work), name=f"{self.what} (leader)")
            loop = asyncio.get_running_loop()
            refresh_at = loop.time() + REFRESH_SECONDS
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_SECONDS):
                        await lost.wait()
                if lost.is_set():
                    break
                # Raises (closing the channel, so the work stops) if the queue went away.
                await channel.declare_queue(self.queue, passive=True)
                if loop.time() >= refresh_at:
                    await token.nack(requeue=True)  # back to us: resets consumer_timeout
                    async with asyncio.timeout(CHECK_SECONDS * 2):
                        token = await tokens.get()
                    refresh_at = loop.time() + REFRESH_SECONDS
        finally:
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            self._set_leading(False)
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()  # hands the token to the next replica

    async def _wait_token(
        self,
        channel: AbstractChannel,
        tokens: asyncio.Queue[AbstractIncomingMessage],
        lost: asyncio.Event,
    ) -> AbstractIncomingMessage | None:
        """Standby: wait for the token, checking every few seconds that the queue is there."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_SECONDS):
                    return await tokens.get()
            # Raises (closing the channel) when the queue was deleted from under us.
            await channel.declare_queue(self.queue, passive=True)
        return None

    async def _run(self, work: Work) -> None:
        """Run the work while leading; restart it (after a pause) should it fail."""
        delay = 1.0
        while True:
            try:
                await work()
                await asyncio.Event().wait()  # work done (e.g. a hook registered): keep the lease
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting in %.0fs", self.what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        log.info("%s: %s", self.what, "leading on this replica" if leading else "not leading")
        if self.on_change is not None:
            self.on_change(leading)
