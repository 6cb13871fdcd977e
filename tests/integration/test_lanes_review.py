"""Review of d73d53e (topology lanes): what one topology channel did implicitly.

A queue declared `robust` on `topology.channel` (lane 0) stays on that channel's restore list
until a `queue_delete` *on that channel* takes it off (aio-pika's RobustChannel.queue_delete).
Topology.delete_queue now deletes over `lane(name)`: for any name not on lane 0 the deleted
queue stays on lane 0's restore list, and every reconnect of the publisher connection
declares it again (not passively): the queue comes back."""

from __future__ import annotations

import zlib

import pytest
from yarl import URL

from rabbitmesh.amqp import topology as topology_module
from rabbitmesh.amqp.names import Names
from tests.integration.test_jobsink import jobsink
from tests.integration.test_shared_channels import _local_ports_to
from tests.support.api import call
from tests.support.rabbit import list_names, rabbitmqctl
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

JOBSINKS = "/apis/sinks.knative.dev/v1alpha1/namespaces/default/jobsinks"


LANES = getattr(topology_module, "LANES", 8)


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
    mine = _local_ports_to(URL(mesh.server.settings.amqp_url).port)
    out = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "peer_port", "client_properties"
    )
    pids = [
        line.split("\t")[0]
        for line in out.splitlines()
        if int(line.split("\t")[1]) in mine and "rabbitmesh-publisher" in line
    ]
    assert len(pids) == 1, out
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
    for lane in getattr(topology, "_lanes", (topology.channel,)):
        await lane.ready()  # every lane restored
    left = {queue, runs} & set(list_names("queues", prefix))
    assert not left, f"deleted JobSink's queues re-created by the reconnect: {sorted(left)}"


async def test_a_worker_started_while_its_shared_channel_is_restored_does_not_fail_the_restore(
    start_mesh, make_sink, monkeypatch
):
    """A QueueWorker no longer waits for its channel to be ready before consuming (d73d53e:
    `queue_to_consume` instead of `get_queue(ensure=True)`, whose declare awaited
    `RobustChannel.ready()`). A shared channel being restored after a reconnect is open (its
    new underlay) and is leased to a new worker, which puts its queue on the restore list
    and consumes at once; the restore then consumes that queue again under the same
    consumer tag (DuplicateConsumerTag), fails, and with it the whole connection's restore:
    every worker on the connection is reconnected once more (their deliveries redelivered).

    The restore is held here at its start, as a slow one is (a connection's channels are
    restored one after another, 16 queues each), while a Trigger created meanwhile starts."""
    import asyncio
    import contextlib

    from rabbitmesh.amqp import channels as channels_module
    from tests.integration.test_shared_channels import _close_workers_connection, _triggers
    from tests.support.api import TRIGGERS
    from tests.support.events import post_each_type
    from tests.support.manifests import trigger_manifest

    sink = await make_sink()
    mesh = await start_mesh(_triggers(sink.url, "t1", "t2"))
    ctx = mesh.server.ctx
    shared = ctx.workers[ctx.names.trigger_queue("default", "t1")]._channel
    assert ctx.workers[ctx.names.trigger_queue("default", "t2")]._channel is shared

    original = channels_module.TidyRobustChannel._restore_queues
    entered, gate = asyncio.Event(), asyncio.Event()
    failures: list[BaseException] = []

    async def held(self):
        if self is shared and not entered.is_set():
            entered.set()
            await gate.wait()
        try:
            await original(self)
        except channels_module._QueueGone:
            raise
        except Exception as e:
            failures.append(e)
            raise

    monkeypatch.setattr(channels_module.TidyRobustChannel, "_restore_queues", held)
    _close_workers_connection(mesh)
    await eventually(lambda: entered.is_set(), 30, what="the shared channel's restore")

    manifest = trigger_manifest("t3", sink.url, filter_type="t3")
    post = asyncio.create_task(
        call("POST", mesh.url + TRIGGERS.format(ns="default"), text=manifest)
    )
    t3 = ctx.names.trigger_queue("default", "t3")
    with contextlib.suppress(AssertionError):  # before d73d53e it waits for the restore
        await eventually(
            lambda: t3 in ctx.workers and ctx.workers[t3]._tag is not None, 5, what="t3 started"
        )
    gate.set()
    await asyncio.sleep(2)  # the restore runs its course
    assert failures == [], f"the shared channel's restore failed: {failures!r}"
    # Bounded: on d73d53e^ as with the fix, this reconcile (waiting for the channel's
    # restore) sometimes never finishes (seen 3 of 4 runs on d73d53e^; not diagnosed).
    status, body = await asyncio.wait_for(post, 30)
    assert status == 201, body
    await eventually(lambda: t3 in ctx.workers and ctx.workers[t3]._tag is not None, 30)
    ids = await post_each_type(f"{mesh.url}/default/br", ["t1", "t3"])
    await eventually(lambda: set(ids) <= {r.ce_id for r in sink.received}, 30, what="delivered")
    assert failures == [], f"the shared channel's restore failed: {failures!r}"
