"""A TCP proxy in front of RabbitMQ that a test can cut and restore: a real network failure
for one rabbitmesh instance, without disturbing other users of the shared RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from urllib.parse import urlsplit


class TcpProxy:
    """With `ssl_context`, clients speak TLS to the proxy and it forwards plain TCP: a TLS
    listener in front of a RabbitMQ that has none (amqps:// tests)."""

    def __init__(
        self,
        target_host: str | None = None,
        target_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # By default the RabbitMQ the suite runs against (RABBITMESH_TEST_AMQP_URL), not
        # whatever listens on 5672: with a private node, 5672 is someone else's.
        node = urlsplit(os.environ.get("RABBITMESH_TEST_AMQP_URL", "amqp://127.0.0.1:5672/"))
        self.target = (
            target_host or node.hostname or "127.0.0.1",
            target_port or node.port or 5672,
        )
        self.ssl_context = ssl_context
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.open = True
        # Cleared by hold(): bytes from RabbitMQ wait in the proxy (confirms, deliveries).
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, uwriter))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, from_target: bool) -> None:
            try:
                while data := await r.read(65536):
                    if from_target:
                        await self._flowing.wait()
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    w.close()
                self._conns.discard(w)

        await asyncio.gather(pipe(reader, uwriter, False), pipe(ureader, writer, True))

    def hold(self) -> None:
        """Keep forwarding to RabbitMQ but hold back what it sends (its confirms, its
        deliveries): publishes stay unconfirmed until release(), connections stay up."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Drop every connection and refuse new ones, like RabbitMQ going away."""
        self.open = False
        self._flowing.set()  # held bytes go nowhere: their connections are closed
        for w in list(self._conns):
            w.close()
        self._conns.clear()

    def restore(self) -> None:
        self.open = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
