"""The pieces of rabbitmesh/workers.py and amqp/coalesce.py that need no RabbitMQ."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from rabbitmesh.amqp.coalesce import CoalescingWriter
from rabbitmesh.workers import EARLY, READY, STARTING, STOPPING, Siblings, reserve_port


def test_a_write_waits_only_for_ready_workers_that_are_behind(tmp_path: Path) -> None:
    me = Siblings(tmp_path / "s", 4, index=0)
    other = Siblings(tmp_path / "s", 4)  # another process' view of the same file
    other.write(1, 101, READY, 7)
    other.write(2, 102, STARTING, -1)  # not ready: reads the store at start anyway
    other.write(3, 103, STOPPING, 2)  # going away: nobody waits for it
    me.mark(state=READY, offset=9)
    assert me.behind(7) == []
    assert me.behind(8) == [1]
    other.write(1, 101, READY, 8)
    assert me.behind(8) == []
    assert other.read(0)[1:] == (READY, 9)
    other.write(2, 102, EARLY, -1)
    assert me.starting_early() == [2]


def test_only_the_first_worker_applies_the_config_dir_while_it_starts(tmp_path: Path) -> None:
    """The others wait for it (then find nothing to write) rather than writing every
    document a second time; not for a first worker that is ready or gone."""
    first = Siblings(tmp_path / "s", 3, index=0)
    second = Siblings(tmp_path / "s", 3, index=1)
    supervisor = Siblings(tmp_path / "s", 3)
    supervisor.write(0, 0, STARTING, -1)
    assert not first.config_writer_pending()
    assert second.config_writer_pending()
    first.mark(state=EARLY)
    assert second.config_writer_pending()
    first.mark_config_applied()
    assert not second.config_writer_pending()
    third = Siblings(tmp_path / "t", 2, index=1)  # another run: the first is ready already
    Siblings(tmp_path / "t", 2).write(0, 1, READY, 5)
    assert not third.config_writer_pending()
    Siblings(tmp_path / "t", 2).write(0, 1, STOPPING, -1)
    assert not third.config_writer_pending()


def test_the_supervisor_port_is_shared_by_reuseport_sockets_only() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    try:
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))  # a worker joins the reserved port
        worker.listen()
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # anybody else does not
        plain.close()
        with pytest.raises(OSError):  # nor does a second supervisor
            reserve_port("127.0.0.1", port)
        worker.close()
    finally:
        reserved.close()


async def test_frames_written_in_one_iteration_go_out_as_one_write() -> None:
    received = bytearray()
    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
            got.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, raw = await asyncio.open_connection("127.0.0.1", port)
    writes: list[bytes] = []
    real = raw.write

    def spy(data: bytes) -> None:
        writes.append(data)
        real(data)

    raw.write = spy  # type: ignore[method-assign]
    writer = CoalescingWriter(raw)
    for frame in (b"one,", b"two,", b"three"):
        writer.write(frame)
    await writer.drain()  # nothing backed up: does not force a write of its own
    assert writes == []
    await asyncio.sleep(0)  # the end of the loop iteration
    assert writes == [b"one,two,three"]
    async with asyncio.timeout(5):
        while bytes(received) != b"one,two,three":
            got.clear()
            await got.wait()
    writer.close()
    server.close()
    await server.wait_closed()


def test_each_worker_process_walks_a_batch_from_its_own_place_in_it() -> None:
    """Worker processes reconcile every resource; begun at the same place they asked RabbitMQ
    to create the same queues at the same moment, and each creation was done twice."""
    from typing import Any, cast

    from rabbitmesh.reconciler.controller import Controller

    batch = cast(Any, list(range(10)))

    def walk(index: int, count: int) -> list[int]:
        return cast(list[int], Controller(cast(Any, None), 8, (index, count))._rotated(batch))

    assert walk(0, 1) == list(range(10))
    assert walk(0, 2) == list(range(10))
    assert walk(1, 2) == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    assert [w[0] for w in (walk(i, 3) for i in range(3))] == [0, 3, 6]
    assert all(sorted(walk(i, 4)) == list(range(10)) for i in range(4))  # nothing left out
