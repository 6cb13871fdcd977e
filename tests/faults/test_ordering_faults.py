"""Per-key order through a RabbitMQ restart (issue 14, docs/ordering.md). Disruptive: it
stops and starts the whole node (put back whatever happens, tests/support/disruption.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.test_ordering import (
    KEYS,
    ORDERED,
    PER_KEY,
    FlakySubscriber,
    check_order,
    manifests,
    send_keys,
)
from tests.support.disruption import node_stopped
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.disruptive, pytest.mark.timeout(300)]


async def test_per_key_order_holds_through_a_rabbitmq_restart(start_mesh, make_sink):
    flaky = FlakySubscriber()
    sink = await make_sink(flaky)
    mesh = await start_mesh(manifests(sink.url, ORDERED, retry=10))
    # Paced senders (a steady load, not synchronisation): RabbitMQ stops mid-stream.
    sending = asyncio.create_task(send_keys([mesh.url + "/default/br"], "restart", pace=0.1))

    def delivered() -> int:
        return len({(k, s) for k, s, ok in flaky.log if ok})

    await eventually(lambda: delivered() >= KEYS * PER_KEY // 4, timeout=120, what="a quarter")
    at_stop = delivered()
    async with node_stopped():
        await eventually(lambda: _not_ready(mesh.url), timeout=60, what="the outage seen")
    assert at_stop < KEYS * PER_KEY, "restarted too late to test anything"
    await sending  # senders resend what got 503 while RabbitMQ was down
    await eventually(
        lambda: delivered() == KEYS * PER_KEY, timeout=180, what="every event delivered"
    )
    check_order(flaky.log)


async def _not_ready(url: str) -> bool:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url + "/readyz") as r:
        return r.status == 503
