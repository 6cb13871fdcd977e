"""Failures inside flows with `rabbitmesh run` as a real process: killed while events wait
between the steps of a Sequence, or while replies wait for their destination, it loses
nothing once it is back. (Retries and dead letters of one failing step or branch are in
test_sequence.py and test_parallel.py.)"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.events import binary_headers
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.responders import appending, message
from tests.support.sink import Received, Reply, Responder
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


class Outage:
    """A subscriber that answers 503 until `end()`, then `answer`; records what it accepted."""

    def __init__(self, answer: Responder) -> None:
        self.answer = answer
        self.over = False
        self.accepted: dict[str, str] = {}  # id -> data.message

    def end(self) -> None:
        self.over = True

    def __call__(self, r: Received, i: int) -> Reply:
        if not self.over:
            return Reply(503)
        self.accepted[r.ce_id or ""] = message(r)
        return self.answer(r, i)


async def send(url: str, ids: list[str]) -> set[int]:
    async with aiohttp.ClientSession() as s:

        async def one(i: str) -> int:
            body = orjson.dumps({"message": i})
            async with s.post(url, headers=binary_headers(id_=i), data=body) as r:
                return r.status

        return set(await asyncio.gather(*(one(i) for i in ids)))


async def kill_and_restart(mesh: MeshProcess, *outages: Outage) -> MeshProcess:
    mesh.signal(signal.SIGKILL)
    await mesh.wait()
    for outage in outages:
        outage.end()
    config, prefix = mesh.env["RABBITMESH_CONFIG_DIR"], mesh.env["RABBITMESH_TOPOLOGY_PREFIX"]
    return await MeshProcess(Path(config), prefix, port=mesh.port).start()


async def test_killed_mid_sequence_loses_nothing(tmp_path, prefix, make_sink):
    step1 = Outage(appending(" - 1"))
    end = Outage(lambda r, i: Reply(202))
    first = await make_sink(appending(" - 0"))
    second = await make_sink(step1)
    third = await make_sink(appending(" - 2"))
    display = await make_sink(end)
    retry = "{retry: 30, backoffPolicy: linear, backoffDelay: PT0.3S}"
    write_manifests(
        tmp_path / "c",
        f"""
        apiVersion: flows.knative.dev/v1
        kind: Sequence
        metadata: {{name: seq}}
        spec:
          steps:
            - {{uri: "{first.url}"}}
            - {{uri: "{second.url}", delivery: {retry}}}
            - {{uri: "{third.url}", delivery: {retry}}}
          reply: {{uri: "{display.url}"}}
        """,
    )
    mesh = await MeshProcess(tmp_path / "c", prefix).start()
    ids = [f"e{i}" for i in range(30)]
    assert await send(mesh.url + "/sequences/default/seq", ids) == {202}
    # Every event went through step 0 and failed at step 1: all now wait between retries.
    await eventually(lambda: set(second.ids()) >= set(ids), timeout=20, what="step 1 tried")
    mesh2 = await kill_and_restart(mesh, step1, end)
    try:
        await eventually(
            lambda: set(end.accepted) >= set(ids), timeout=30, what="every event at the end"
        )
    finally:
        await mesh2.stop()
    assert end.accepted == {i: f"{i} - 0 - 1 - 2" for i in ids}


async def test_killed_while_replies_wait_for_their_destination_loses_none(
    tmp_path, prefix, make_sink
):
    end = Outage(lambda r, i: Reply(202))
    step = await make_sink(appending("!"))
    display = await make_sink(end)
    write_manifests(
        tmp_path / "c",
        f"""
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {{name: ch}}
        spec: {{delivery: {{retry: 30, backoffPolicy: linear, backoffDelay: PT0.3S}}}}
        ---
        apiVersion: messaging.knative.dev/v1
        kind: Subscription
        metadata: {{name: s}}
        spec:
          channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: ch}}
          subscriber: {{uri: "{step.url}"}}
          reply: {{uri: "{display.url}"}}
        """,
    )
    mesh = await MeshProcess(tmp_path / "c", prefix).start()
    ids = [f"r{i}" for i in range(20)]
    assert await send(mesh.url + "/channels/default/ch", ids) == {202}
    await eventually(lambda: set(display.ids()) >= set(ids), timeout=20, what="replies tried")
    mesh2 = await kill_and_restart(mesh, end)
    try:
        await eventually(
            lambda: set(end.accepted) >= set(ids), timeout=30, what="every reply delivered"
        )
    finally:
        await mesh2.stop()
    assert end.accepted == {i: f"{i}!" for i in ids}
    # The replies waited on their own: the subscriber was called once per event.
    assert sorted(step.ids()) == sorted(ids)
