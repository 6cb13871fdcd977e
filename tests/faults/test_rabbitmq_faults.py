"""RabbitMQ misbehaving under steady load: restarted, every connection closed, a resource
alarm. Every event that got a 202 must reach its subscriber.

These scenarios disturb the whole RabbitMQ node (marked `disruptive`): run them against a
node of your own while others test against the shared one, or deselect them with
-m "not slow and not compose and not disruptive" (tests/faults/README.md). Whatever happens,
the node is put back (tests/support/disruption.py).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.faults.conftest import TriggerSpec, alarms
from tests.support.disruption import node_stopped
from tests.support.faults import CLIENT_TIMEOUT, LoadGenerator, settle
from tests.support.rabbit import rabbitmqctl
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.disruptive, pytest.mark.timeout(240)]


async def ctl(*args: str) -> None:
    await asyncio.to_thread(rabbitmqctl, "-q", *args)


async def test_rabbitmq_stop_app_start_app_mid_load(meshes, sinks):
    sink = await sinks()
    mesh = await meshes([TriggerSpec("t", sink)])
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    await load.wait_accepted(600, "load flowing before the fault")
    async with node_stopped():
        # While RabbitMQ is down ingress answers, and answers 503: nothing hangs.
        await eventually(
            lambda: load.count(503) >= 300, timeout=30, what="503s while RabbitMQ is stopped"
        )
    await load.wait_accepted(600, "accepting again after start_app", timeout=90)
    result = await settle("rabbitmq stop_app/start_app", load, [sink], started, timeout=90)
    assert set(result.refused) <= {"503"}, result.line()


async def test_rabbitmq_closes_all_connections_mid_load(meshes, sinks):
    sink = await sinks()
    mesh = await meshes([TriggerSpec("t", sink)])
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    await load.wait_accepted(600, "load flowing before the fault")
    await ctl("close_all_connections", "fault injection")
    await load.wait_accepted(900, "accepting again after the connections were closed")
    result = await settle("rabbitmq close_all_connections", load, [sink], started)
    assert set(result.refused) <= {"503"}, result.line()


@pytest.mark.parametrize("kind", ["memory", "disk"])
async def test_resource_alarm_gives_503_with_retry_after_then_recovers(
    meshes, sinks, resource_alarm, kind
):
    """A memory or disk alarm blocks publishers. Ingress answers 503 + Retry-After at once
    (connection.blocked), or within RABBITMESH_PUBLISH_TIMEOUT for a publish caught in the
    moment the block begins, and accepts again once the alarm clears."""
    sink = await sinks()
    mesh = await meshes([TriggerSpec("t", sink)])
    publish_timeout = 10.0  # the default RABBITMESH_PUBLISH_TIMEOUT
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br", timeout=60).start()
    await load.wait_accepted(600, "load flowing before the alarm")
    # This machine's own slowness right now, to bound the answers during the alarm by.
    baseline = max(load.latency.values())
    clear = resource_alarm(kind)
    try:
        assert kind in alarms()
        await eventually(
            lambda: load.count(503) >= 600,
            timeout=publish_timeout + 20,
            what=f"503s during the {kind} alarm",
        )
        async with (
            aiohttp.ClientSession() as s,
            s.post(mesh.url + "/default/br", headers=probe_headers(), data=b"{}") as r,
        ):
            body = await r.json()
            assert r.status == 503 and int(r.headers["Retry-After"]) >= 1, (r.status, body)
            assert "alarm" in body["error"], body
    finally:
        clear()
    await load.wait_accepted(600, f"accepting again after the {kind} alarm", timeout=60)
    slowest = max(load.latency.values())
    result = await settle(
        f"rabbitmq {kind} alarm", load, [sink], started, slowest_answer_s=round(slowest, 2)
    )
    assert set(result.refused) <= {"503"}, result.line()
    assert load.count(CLIENT_TIMEOUT) == 0
    # A publish caught as the block begins waits out publish_timeout; nothing waits longer
    # than that plus what answers took here before the alarm (a hang would reach 60 s).
    bound = publish_timeout + max(5.0, 3 * baseline)
    assert slowest < bound, f"a request took {slowest:.1f}s (before the alarm {baseline:.1f}s)"


def probe_headers() -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": "probe",
        "ce-type": "com.example.probe",
        "ce-source": "tests/faults",
        "content-type": "application/json",
    }
