"""Subscribers misbehaving under steady load: down for a while, a dead-letter sink that is
down, one that hangs next to healthy ones, and a poison message in a trigger queue."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

from rabbitmesh.amqp.names import Names
from tests.faults.conftest import TriggerSpec
from tests.support.faults import LoadGenerator, assert_ingress_unaffected, settle
from tests.support.mesh import AMQP_URL
from tests.support.rabbit import list_names, queue_depth, rabbitmqctl
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration]


async def subscriber_down(meshes, sinks, seconds: float, delivery: str) -> None:
    sink = await sinks()
    mesh = await meshes([TriggerSpec("t", sink, delivery=delivery)])
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    await load.wait_accepted(600, "load flowing before the subscriber goes down")
    down_at, fault_from = time.monotonic(), load.sent
    await sink.down()
    # The outage is the scenario: the subscriber stays down at least this long, and until
    # ingress accepted 600 events meanwhile (a slow machine stretches it, never shortens it).
    await load.wait_accepted(600, "load accepted while the subscriber is down", seconds + 60)
    if (left := seconds - (time.monotonic() - down_at)) > 0:
        await asyncio.sleep(left)
    fault_to = load.sent
    await sink.start()
    await load.wait_accepted(600, "load flowing after the subscriber came back")
    result = await settle(
        f"subscriber down {seconds:g}s", load, [sink], started, timeout=seconds + 120
    )
    assert_ingress_unaffected(load, result, (fault_from, fault_to))


@pytest.mark.timeout(240)
async def test_subscriber_down_10s_then_back(meshes, sinks):
    await subscriber_down(
        meshes, sinks, 10, "{retry: 8, backoffPolicy: exponential, backoffDelay: PT0.5S}"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_subscriber_down_2min_then_back(meshes, sinks):
    # Retries 1, 2, 4, ... 128 s apart: still retrying when the subscriber returns.
    await subscriber_down(
        meshes, sinks, 120, "{retry: 9, backoffPolicy: exponential, backoffDelay: PT1S}"
    )


async def _at_least(queue: str, n: int) -> int:
    depth = await queue_depth(queue)
    return depth if depth >= n else 0


@pytest.mark.timeout(240)
async def test_dead_letter_sink_down_events_wait_in_rabbitmq(meshes, sinks, prefix):
    failing, dls = await sinks("subscriber"), await sinks("dead-letter sink")
    failing.mode, failing.fail_status = "fail", 400  # not retried: dead-lettered at once
    delivery = f'{{retry: 2, backoffDelay: PT0.5S, deadLetterSink: {{uri: "{dls.url}"}}}}'
    mesh = await meshes([TriggerSpec("t", failing, delivery=delivery)])
    dlq = Names(prefix).dead_letter_queue(Names(prefix).trigger_queue("default", "t"))
    started = time.monotonic()
    await dls.down()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    # The dead-letter sink stays down under load until 500 events wait for it in RabbitMQ
    # (ready, beyond what the worker prefetched): however long that takes on this machine.
    waiting = await eventually(
        lambda: _at_least(dlq, 500), timeout=120, interval=0.5, what=f"500 events in {dlq}"
    )
    fault_to = load.sent
    await dls.start()
    await load.wait_accepted(600, "load flowing after the dead-letter sink came back")
    result = await settle(
        "dead-letter sink down 10s", load, [dls], started, timeout=120, waited_in_dlq=waiting
    )
    # The fault lasted from the first event on: no "before" to compare with; only 503s.
    assert set(result.refused) <= {"503"}, result.line()
    assert load.acceptance(0, fault_to) > 0
    assert failing.requests >= result.accepted


@pytest.mark.timeout(240)
async def test_hanging_subscriber_does_not_starve_other_triggers(meshes, sinks, prefix):
    hanging, a, b = await sinks("hanging"), await sinks("a"), await sinks("b")
    concurrency, prefetch = 64, 128  # the bounds on one trigger's deliveries in flight
    mesh = await meshes(
        [
            TriggerSpec(
                "hangs", hanging, delivery="{retry: 8, backoffDelay: PT0.5S, timeout: PT2S}"
            ),
            TriggerSpec("a", a),
            TriggerSpec("b", b),
        ],
        RABBITMESH_CONCURRENCY=str(concurrency),
        RABBITMESH_PREFETCH=str(prefetch),
    )
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    await load.wait_accepted(600, "load flowing before the subscriber hangs")
    fault_from = load.sent
    hanging.hang()
    acked_before_hang = sum(hanging.ok.values())  # frozen from here: it answers nothing
    await load.wait_accepted(1500, "load flowing while one subscriber hangs")
    # While `hanging` still hangs, the others keep up: everything accepted so far reaches
    # them within a few seconds.
    so_far = load.accepted()
    await eventually(
        lambda: not a.missing(so_far) and not b.missing(so_far),
        timeout=60,  # `hanging` hangs until released: the bound only has to end the test
        what="the healthy triggers keeping up while another one hangs",
    )
    assert hanging.mode == "hang" and sum(hanging.ok.values()) == acked_before_hang
    # What one stuck subscriber can tie up is bounded: RABBITMESH_CONCURRENCY requests in
    # flight, RABBITMESH_PREFETCH messages unacked; the rest waits in RabbitMQ.
    assert 0 < hanging.max_open_held <= concurrency, hanging.max_open_held
    unacked = await asyncio.to_thread(
        rabbitmqctl, "-q", "list_queues", "--no-table-headers", "name", "messages_unacknowledged"
    )
    queue = Names(prefix).trigger_queue("default", "hangs")
    counts = dict(line.split("\t") for line in unacked.splitlines() if "\t" in line)
    assert 0 < int(counts[queue]) <= prefetch, counts[queue]
    fault_to = load.sent
    hanging.release()
    result = await settle(
        "one subscriber hangs, two others flow", load, [hanging, a, b], started, timeout=120
    )
    assert_ingress_unaffected(load, result, (fault_from, fault_to))


@pytest.mark.timeout(240)
async def test_poison_message_is_parked_once_and_never_loops(meshes, sinks, prefix):
    sink = await sinks()
    mesh = await meshes([TriggerSpec("t", sink)])
    names = Names(prefix)
    queue = names.trigger_queue("default", "t")
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    await load.wait_accepted(300, "load flowing before the poison")
    fault_from = load.sent
    poison = [
        aio_pika.Message(b"\x00\xff not an event", delivery_mode=2),
        aio_pika.Message(b"{}", headers={"ce-specversion": "1.0"}, delivery_mode=2),
        aio_pika.Message(
            b"{not json", content_type="application/cloudevents+json", delivery_mode=2
        ),
        aio_pika.Message(b"{}", headers={"ce-specversion": 1.5, "ce-id": [1]}, delivery_mode=2),
    ]
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        for m in poison:
            await ch.default_exchange.publish(m, routing_key=queue)

    async def all_parked() -> bool:
        return await queue_depth(names.parked_queue) == len(poison)

    await eventually(all_parked, timeout=60, what="the poison messages parked")
    await load.wait_accepted(600, "load flowing after the poison")
    fault_to = load.sent
    result = await settle("poison messages in a trigger queue", load, [sink], started)
    assert_ingress_unaffected(load, result, (fault_from, fault_to))
    # Parked exactly once each, nothing left in the trigger queue, nothing dead-lettered:
    # nothing was ever rejected into a `:dlq`, so (no dead-letter sink) there is none at all.
    assert await queue_depth(names.parked_queue) == len(poison)
    assert await queue_depth(queue) == 0
    assert list_names("queues", queue) == [queue]
    assert sink.requests == sum(sink.ok.values())  # the sink never saw a poison message
