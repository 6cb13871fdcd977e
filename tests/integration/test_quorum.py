"""RABBITMESH_QUEUE_TYPE=quorum against the real RabbitMQ (a single node runs quorum queues too).

Checks that RabbitMQ accepts the quorum arguments Topology declares (x-delivery-limit,
at-least-once dead-lettering with reject-publish, x-message-ttl on delay queues), that
messages still move between those queues as the classic ones do, and that a whole mesh
delivers, retries and dead-letters through quorum queues.
"""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.topology import DELAY_HEADER, QUORUM_DELIVERY_LIMIT, Topology
from tests.integration.test_delivery import broker_and_trigger
from tests.support.events import post_binary
from tests.support.mesh import AMQP_URL
from tests.support.rabbit import rabbitmqctl
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def queues_with_prefix(prefix: str) -> dict[str, dict[str, Any]]:
    """name -> {"type": ..., "arguments": {name: value}} for queues starting with prefix."""
    out = rabbitmqctl("list_queues", "-q", "name", "type", "arguments", "--formatter", "json")
    found = {}
    for q in json.loads(out or "[]"):
        if q["name"].startswith(prefix + "."):
            args = {a[0]: a[2] for a in q["arguments"]}
            found[q["name"]] = {"type": q["type"], "arguments": args}
    return found


async def test_topology_declares_quorum_queues_that_rabbitmq_accepts(prefix):
    names = Names(prefix)
    queue = names.trigger_queue("default", "tr")
    dlq = names.dead_letter_queue(queue)
    delay = names.delay_queue(50)
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        topo = Topology(ch, names, queue_type="quorum")
        await topo.declare_infrastructure()
        await topo.declare_delivery_queue(queue)
        await topo.ensure_delay_queue(50)
        # Declaring again with the same arguments (a second replica, a restart) is accepted.
        await Topology(ch, names, queue_type="quorum").declare_delivery_queue(queue)

        found = queues_with_prefix(prefix)
        assert set(found) == {queue, dlq, delay, names.parked_queue}
        assert {q["type"] for q in found.values()} == {"quorum"}
        assert found[queue]["arguments"] == {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
            "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        assert found[delay]["arguments"] == {
            "x-queue-type": "quorum",
            "x-message-ttl": 50,
            "x-dead-letter-exchange": "",
        }
        assert found[dlq]["arguments"] == {"x-queue-type": "quorum"}
        # A worker about to reject a message makes sure of the :dlq by declaring it classic on
        # a channel of its own: RabbitMQ refuses that for this quorum one (PRECONDITION_FAILED),
        # which says it exists; `ch`, the topology's channel, stays open (used below).
        await Topology(ch, names, "quorum", conn.channel).ensure_dead_letter_queue(queue)
        assert queues_with_prefix(prefix)[dlq]["type"] == "quorum"

        # A retry: through the delay exchange into the delay queue, back to its queue on expiry.
        delay_x = await ch.get_exchange(names.delay_exchange)
        await delay_x.publish(
            aio_pika.Message(b"retry", headers={DELAY_HEADER: "50"}, delivery_mode=2),
            routing_key=queue,
            mandatory=True,
        )
        q = await ch.get_queue(queue)
        msg = await eventually(lambda: q.get(fail=False), timeout=10, what="expired retry")
        assert msg.body == b"retry"
        # A rejection: RabbitMQ dead-letters it (at least once) into the :dlq.
        await msg.reject(requeue=False)
        d = await ch.get_queue(dlq)
        dead = await eventually(lambda: d.get(fail=False), timeout=10, what="dead-lettered")
        assert dead.body == b"retry"
        await dead.ack()
    finally:
        ch = await conn.channel()
        for name in (queue, dlq, delay, names.parked_queue):
            await ch.queue_delete(name)
        await ch.exchange_delete(names.delay_exchange)
        await conn.close()
    assert queues_with_prefix(prefix) == {}


async def test_classic_is_the_default_and_adds_no_arguments(prefix):
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        topo = Topology(await conn.channel(), Names(prefix))
        assert topo.queue_arguments() == {}
        assert topo.queue_arguments({"x-message-ttl": 5}, delivery=True) == {"x-message-ttl": 5}


async def test_mesh_delivers_retries_and_dead_letters_through_quorum_queues(
    start_mesh, make_sink, prefix
):
    flaky = await make_sink(lambda r, i: Reply(503) if i == 0 else Reply(200))
    down = await make_sink(lambda r, i: Reply(500))
    dls = await make_sink()
    manifests = broker_and_trigger(
        flaky.url,
        "delivery: {retry: 2, backoffPolicy: linear, backoffDelay: PT0.1S}",
        trigger_filter="filter: {attributes: {type: com.example.flaky}}",
    ) + broker_trigger_only(
        "down",
        down.url,
        "com.example.down",
        f'delivery: {{retry: 1, backoffDelay: PT0.1S, deadLetterSink: {{uri: "{dls.url}"}}}}',
    )
    mesh = await start_mesh(manifests, queue_type="quorum")

    status, eid = await post_binary(mesh.url + "/default/br", type_="com.example.flaky")
    assert status == 202
    first, second = await flaky.wait_for(2)
    assert first.ce_id == second.ce_id == eid  # the retry went through a quorum delay queue

    status, did = await post_binary(mesh.url + "/default/br", type_="com.example.down")
    assert status == 202
    (dead,) = await dls.wait_for(1)
    assert dead.headers["ce-id"] == did
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert len(down.received) == 2

    names = Names(prefix)
    found = queues_with_prefix(prefix)
    for q in (
        names.trigger_queue("default", "tr"),
        names.trigger_queue("default", "down"),
        names.dead_letter_queue(names.trigger_queue("default", "down")),
        names.delay_queue(100),
        names.parked_queue,
    ):
        assert found[q]["type"] == "quorum", (q, found.get(q))


def broker_trigger_only(name: str, url: str, event_type: str, delivery: str) -> str:
    """One more Trigger on broker `br` (the documents of broker_and_trigger come first)."""
    return f"""
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: {name}}}
        spec:
          broker: br
          filter: {{attributes: {{type: {event_type}}}}}
          subscriber: {{uri: "{url}"}}
          {delivery}
        """
