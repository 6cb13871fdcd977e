"""rabbitmesh itself failing under steady load: SIGKILL, SIGTERM, one of two replicas killed.
Nothing that got a 202 may be lost; what was in flight is delivered again (duplicates)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import TriggerSpec
from tests.support.faults import CLIENT_TIMEOUT, LoadGenerator, settle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_rabbitmesh_stopped_mid_load_then_restarted(meshes, sinks, sig):
    sink = await sinks()
    mesh = await meshes([TriggerSpec("t", sink)])
    started = time.monotonic()
    load = await LoadGenerator(mesh.url + "/default/br").start()
    await load.wait_accepted(600, "load flowing before the signal")
    mesh.signal(sig)
    code = await mesh.wait(30)
    if sig == signal.SIGTERM:
        assert code == 0, mesh.output()[-3000:]
    # The process is gone: requests are refused meanwhile (a scenario duration of ~1 s).
    await load.wait_answered(300, "requests answered while rabbitmesh is down")
    await meshes(port=mesh.port)
    await load.wait_accepted(600, "accepting again after the restart")
    result = await settle(f"rabbitmesh {sig.name} and restart", load, [sink], started)
    # Refused only: 503 while stopping or starting, 0 for a closed port. None hung.
    assert set(result.refused) <= {"503", "0"}, result.line()
    assert load.count(CLIENT_TIMEOUT) == 0


async def test_two_replicas_one_killed_mid_load(meshes, sinks):
    sink = await sinks()
    first = await meshes([TriggerSpec("t", sink)])
    second = await meshes()
    started = time.monotonic()
    load = await LoadGenerator([first.url + "/default/br", second.url + "/default/br"]).start()
    await load.wait_accepted(600, "load flowing through both replicas")
    first.signal(signal.SIGKILL)
    await first.wait(30)
    # Half the requests now find a closed port; the survivor takes the other half and
    # every delivery, including those the killed replica held unacked.
    await load.wait_accepted(600, "the surviving replica accepting")
    result = await settle("two replicas, one SIGKILLed", load, [sink], started)
    assert set(result.refused) <= {"503", "0"}, result.line()
