"""Looking at the real RabbitMQ from tests: what queues/exchanges exist, and cleaning up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess

import aio_pika

from tests.support.mesh import AMQP_URL

#: The node behind AMQP_URL, for rabbitmqctl (unset: rabbitmqctl's default node). Set it with
#: RABBITMESH_TEST_AMQP_URL to run the suite against a private node, e.g. the fault suite
#: (docs/reliability.md) while others test against the default one.
RABBITMQ_NODE = os.environ.get("RABBITMESH_TEST_RABBITMQ_NODE", "")


def rabbitmqctl_command(*args: str) -> list[str]:
    node = ["-n", RABBITMQ_NODE] if RABBITMQ_NODE else []
    return ["rabbitmqctl", *node, *args]


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    return subprocess.run(
        rabbitmqctl_command(*args), capture_output=True, text=True, timeout=timeout, check=True
    ).stdout


def list_names(what: str, prefix: str | tuple[str, ...]) -> list[str]:
    """Queue or exchange names starting with `prefix` (rabbitmqctl: no management plugin)."""
    out = rabbitmqctl(f"list_{what}", "-q", "--no-table-headers", "name")
    return sorted(n.strip() for n in out.splitlines() if n.strip().startswith(prefix))


async def delete_everything(prefix: str | tuple[str, ...]) -> None:
    """Delete every queue and exchange whose name starts with `prefix` (or any of them)."""
    queues, exchanges = list_names("queues", prefix), list_names("exchanges", prefix)
    if not queues and not exchanges:
        return
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        for q in queues:
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.queue_delete(q)
        for x in exchanges:
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.exchange_delete(x)


async def queue_depth(name: str) -> int:
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(name, passive=True)
        return q.declaration_result.message_count or 0


def delete_everything_sync(prefix: str | tuple[str, ...]) -> None:
    asyncio.run(delete_everything(prefix))


def queued_messages(prefix: str | tuple[str, ...]) -> dict[str, int]:
    """Messages (ready + unacknowledged) of every queue whose name starts with `prefix`."""
    out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages")
    depths: dict[str, int] = {}
    for line in out.splitlines():
        name, _, count = line.strip().rpartition("\t")
        if name.startswith(prefix):
            depths[name] = int(count)
    return depths


async def assert_reply_went_nowhere(mesh, sink, event_id: str) -> None:  # type: ignore[no-untyped-def]
    """The step's reply was published nowhere. A reply is published (and confirmed) before
    the delivery that produced it is acked, so once the delivery's ack reached RabbitMQ (every
    queue of this mesh empty) the reply would have been taken by one of its workers, or come
    back to `sink` (a loop)."""
    from tests.support.waiting import eventually

    prefix = mesh.settings.topology_prefix + "."

    def queued() -> dict[str, int]:
        return {q: n for q, n in queued_messages(prefix).items() if n and q != prefix + "store"}

    await eventually(lambda: queued() == {}, timeout=20, what="every queue of the mesh empty")
    stats = [w.stats for w in mesh.server.ctx.workers.values()]
    assert sum(s.delivered for s in stats) == 1
    assert sum(s.in_flight + s.retried + s.dead_lettered + s.parked for s in stats) == 0
    assert sink.ids() == [event_id]
