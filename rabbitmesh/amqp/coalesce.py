"""AMQP frames written to the socket once per event-loop iteration, not once per frame.

aiormq writes every frame set (a publish: method + header + body; an ack) to the socket as
it comes, and asyncio (uvloop too) tries to send each write at once: one `send` system call
per publish and per ack. Profiled at a steady 400 events/s, those calls were a quarter of a
rabbitmesh process' CPU (docs/benchmarks.md, "Where the CPU goes"). Buffering what is written
during one loop iteration and sending it as one write at the end of that iteration costs
every frame at most that iteration's remaining work in latency and saves most of the calls
when the process is busy, which is when it matters.

It plugs in where aiormq allows it (a TransportFactory, given through the connection's
arguments) and wraps asyncio's StreamWriter; everything but write/drain/close passes through.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aiormq.connection import TCPTransportFactory, TLSTransportFactory
from yarl import URL

from rabbitmesh.amqp.channels import TidyRobustChannel

#: Bytes queued for the socket above which `drain` waits for them to go (asyncio's own
#: default high-water mark).
DRAIN_ABOVE = 64 * 1024


class CoalescingWriter:
    """A StreamWriter that sends everything written in one loop iteration as one write."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._buffer: list[bytes] = []
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        """Wait only when the socket is backed up (or gone). aiormq drains after every ack
        and nack: waiting for each to be sent would take back what the buffering saves, and
        nothing waits on an ack being on the wire (AMQP does not confirm acks)."""
        writer = self._writer
        transport = writer.transport
        if (
            writer.is_closing()
            or transport.get_write_buffer_size() + sum(map(len, self._buffer)) > DRAIN_ABOVE
        ):
            self._flush()
            await writer.drain()

    def write_eof(self) -> None:
        self._flush()
        self._writer.write_eof()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:  # transport, is_closing, wait_closed, ...
        return getattr(self._writer, name)


class _CoalescingTCP(TCPTransportFactory):
    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await super().create(url, **kwargs)
        return reader, CoalescingWriter(writer)


class _CoalescingTLS(TLSTransportFactory):
    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await super().create(url, **kwargs)
        return reader, CoalescingWriter(writer)


class CoalescingRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection whose every (re)connection writes through
    CoalescingWriter (aio-pika passes only the parameters it knows on to aiormq, so the
    factory is added to what it passes after it parsed them). Its channels are
    TidyRobustChannels: a closed one leaves nothing on the connection (channels.py)."""

    CHANNEL_CLASS = TidyRobustChannel

    def __init__(self, url: URL, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        tls = URL(url).scheme == "amqps"
        self.kwargs["transport_factory"] = _CoalescingTLS() if tls else _CoalescingTCP()
