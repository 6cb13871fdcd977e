"""A stop of rabbitmesh with subscribers that hang (issue 13, "Control plane at scale")."""

from __future__ import annotations

import time

import pytest

from tests.support.events import post_binary
from tests.support.manifests import broker_manifest, trigger_manifest
from tests.support.sink import Received, Reply

pytestmark = pytest.mark.integration

#: RABBITMESH_SHUTDOWN_TIMEOUT of the meshes here.
SHUTDOWN_TIMEOUT = 3.0


async def test_a_stop_waits_one_shutdown_timeout_for_all_hanging_subscribers_and_loses_nothing(
    start_mesh, make_sink
):
    """The queue workers used to stop one after another, each waiting up to the shutdown
    timeout for its deliveries in flight: three hanging subscribers, three timeouts (9 s and
    more here), thousands of Triggers, minutes. They now stop together, within one. What
    hung is not acked: after a restart it is delivered again."""
    healthy = False

    def answer(_r: Received, _i: int) -> Reply:
        return Reply(200) if healthy else Reply(200, delay=60)  # the subscriber hangs

    sinks = [await make_sink(answer) for _ in range(3)]
    manifests = broker_manifest() + "".join(
        "---\n" + trigger_manifest(f"t{k}", sink.url, delivery="{timeout: PT60S}")
        for k, sink in enumerate(sinks)
    )
    mesh = await start_mesh(manifests, shutdown_timeout=SHUTDOWN_TIMEOUT)
    status, eid = await post_binary(mesh.url + "/default/br", data={"n": 1})
    assert status == 202
    for sink in sinks:
        await sink.wait_for(1)  # in flight at each of the three
    started = time.monotonic()
    await mesh.stop()
    took = time.monotonic() - started
    # It waited for the deliveries in flight (a graceful stop), but once, not per queue.
    assert SHUTDOWN_TIMEOUT - 0.5 < took < 2 * SHUTDOWN_TIMEOUT, took
    healthy = True
    await start_mesh(manifests, shutdown_timeout=SHUTDOWN_TIMEOUT)
    for sink in sinks:
        got = await sink.wait_for(2, timeout=30)
        assert [r.ce_id for r in got[:2]] == [eid, eid]
