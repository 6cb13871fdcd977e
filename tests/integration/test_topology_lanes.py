"""Topology declares over several channels ("lanes", amqp/topology.py, issue 13): RabbitMQ runs
one channel's methods one at a time, and aiormq sends one at a time per channel, so over a
single channel every reconcile waited for the queue creations of the others."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.topology import LANES, Topology
from tests.support.mesh import AMQP_URL
from tests.support.rabbit import list_names

pytestmark = pytest.mark.integration


async def test_a_declare_waiting_on_its_lane_holds_up_no_other_lane(prefix):
    names = Names(prefix)
    conn = await aio_pika.connect_robust(AMQP_URL)
    try:
        topology = await Topology.open(conn.channel, names)
        queues = [names.trigger_queue("default", f"t{i}") for i in range(64)]
        assert len({id(topology.lane(q)) for q in queues}) == LANES  # 64 names use every lane
        assert all(topology.lane(q) is topology.lane(q) for q in queues)  # one name, one lane
        busy = queues[0]
        same = next(q for q in queues[1:] if topology.lane(q) is topology.lane(busy))
        other = next(q for q in queues[1:] if topology.lane(q) is not topology.lane(busy))
        underlay = await topology.lane(busy).get_underlay_channel()
        async with underlay.lock:  # as while RabbitMQ creates `busy` on that lane
            waiting = asyncio.create_task(topology.declare_delivery_queue(same))
            await asyncio.wait_for(topology.declare_delivery_queue(other), 10)
            await asyncio.wait_for(topology.bind(other, "amq.topic", "k"), 10)
            assert not waiting.done()  # its lane is held: it waits, the other lane did not
        await asyncio.wait_for(waiting, 10)
        assert {same, other} <= set(list_names("queues", prefix))
        # What is done to one name goes over its lane, in the order asked.
        await topology.delete_queue(same)
        assert same not in list_names("queues", prefix)
    finally:
        await conn.close()
