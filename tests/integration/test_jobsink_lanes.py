"""A JobSink's queues are declared on the lanes their deletes go over (amqp/topology.py).

A queue declared `robust` on a channel stays on that channel's restore list until a
`queue_delete` *on that channel* takes it off (aio-pika's RobustChannel.queue_delete).
Declared on lane 0 and deleted over `lane(name)`, a deleted JobSink's queue stayed on lane
0's restore list, and every reconnect of the publisher connection declared it again (not
passively): the queue came back (found by review of d73d53e)."""

from __future__ import annotations

import zlib

import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.topology import LANES
from tests.integration.test_jobsink import jobsink
from tests.integration.test_shared_channels import own_connections
from tests.support.api import call
from tests.support.rabbit import list_names, rabbitmqctl
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

JOBSINKS = "/apis/sinks.knative.dev/v1alpha1/namespaces/default/jobsinks"


def _lane(name: str) -> int:
    return zlib.crc32(name.encode()) % LANES


def _off_lane_zero(names: Names) -> str:
    """A JobSink name whose queue and `:runs` stream are both on a lane other than 0, the
    infrastructure channel jobsink.py declares them on."""
    for i in range(1000):
        name = f"job{i}"
        if _lane(names.jobsink_queue("default", name)) and _lane(
            names.jobsink_runs("default", name)
        ):
            return name
    raise AssertionError("no such name")


def _close_publisher_connection(mesh) -> None:
    pids = own_connections(mesh, "rabbitmesh-publisher")
    assert len(pids) == 1, pids
    rabbitmqctl("close_connection", pids[0], "test: connection lost")


async def test_a_deleted_jobsinks_queues_do_not_come_back_after_a_reconnect(
    start_mesh, tmp_path, prefix
):
    names = Names(prefix)
    name = _off_lane_zero(names)
    queue, runs = names.jobsink_queue("default", name), names.jobsink_runs("default", name)
    mesh = await start_mesh(jobsink(tmp_path / "out.jsonl", name))
    assert mesh.server.ctx.get("JobSink", "default", name).status.ready == "True"
    assert {queue, runs} <= set(list_names("queues", prefix))

    status, body = await call("DELETE", f"{mesh.url}{JOBSINKS}/{name}")
    assert status == 200, body
    await eventually(
        lambda: not {queue, runs} & set(list_names("queues", prefix)), what="its queues deleted"
    )

    publisher = mesh.server.publisher
    reconnected: list[object] = []
    publisher.connection.reconnect_callbacks.add(lambda *_: reconnected.append(1))
    _close_publisher_connection(mesh)
    await eventually(lambda: reconnected and publisher.connected, 30, what="a reconnect")
    topology = mesh.server.ctx.topology
    for lane in topology._lanes:
        await lane.ready()  # every lane restored
    left = {queue, runs} & set(list_names("queues", prefix))
    assert not left, f"deleted JobSink's queues re-created by the reconnect: {sorted(left)}"
