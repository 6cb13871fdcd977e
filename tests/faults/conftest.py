"""Fixtures of the fault-injection suite: real `rabbitmesh run` processes, counting sinks,
and RabbitMQ settings that are always put back."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.disruption import Disruption, disrupt
from tests.support.faults import IdSink
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.rabbit import rabbitmqctl


@dataclass
class TriggerSpec:
    name: str
    sink: IdSink
    delivery: str = "{retry: 8, backoffPolicy: exponential, backoffDelay: PT0.5S}"
    type_: str | None = None  # exact type filter, or every event

    def yaml(self) -> str:
        filt = f"\n  filter: {{attributes: {{type: {self.type_}}}}}" if self.type_ else ""
        return (
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
            f"metadata: {{name: {self.name}}}\n"
            f'spec:\n  broker: br\n  subscriber: {{uri: "{self.sink.url}"}}\n'
            f"  delivery: {self.delivery}{filt}\n"
        )


def manifests(triggers: list[TriggerSpec]) -> str:
    broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: br}\n"
    return broker + "".join(t.yaml() for t in triggers)


@pytest.fixture
async def sinks() -> AsyncIterator[Callable[[str], Awaitable[IdSink]]]:
    made: list[IdSink] = []

    async def make(name: str = "sink") -> IdSink:
        s = await IdSink(name).start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.down()


@pytest.fixture
async def meshes(
    tmp_path: Path, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[MeshProcess]]]:
    """Start `rabbitmesh run` processes on one config dir and prefix (replicas of one
    installation); `config` writes the manifests first. Their logs are printed when the test
    failed."""
    started: list[MeshProcess] = []
    config = tmp_path / "config"

    async def start(
        triggers: list[TriggerSpec] | None = None, port: int | None = None, **env: str
    ) -> MeshProcess:
        if triggers is not None:
            write_manifests(config, manifests(triggers))
        mesh = MeshProcess(config, prefix, port=port, **env)
        started.append(mesh)
        return await mesh.start(timeout=60)

    yield start
    await asyncio.gather(*(m.stop() for m in started))
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for i, m in enumerate(started):
            print(f"\n--- rabbitmesh #{i} log (tail) ---\n" + m.output()[-6000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


def _eval(expression: str) -> str:
    return rabbitmqctl("-q", "eval", expression).strip()


@pytest.fixture
def resource_alarm() -> Iterator[Callable[[str], Callable[[], None]]]:
    """Raise a RabbitMQ resource alarm: `alarm("memory")` or `alarm("disk")` returns the
    function that clears it. Whatever happens, the node's own limits are restored after the
    test."""
    raised: list[Disruption] = []

    def alarm(kind: str) -> Callable[[], None]:
        # Recorded before it is raised (tests/support/disruption.py): a run killed mid-alarm
        # is cleared by the next session.
        if kind == "memory":
            value = _eval("vm_memory_monitor:get_vm_memory_high_watermark().")
            previous = value if re.fullmatch(r"[0-9.]+", value) else "0.4"
            command = "set_vm_memory_high_watermark"
            disruption = disrupt([command, "0.0001"], [command, previous])
        elif kind == "disk":
            value = _eval("rabbit_disk_monitor:get_disk_free_limit().")
            previous = value if value.isdigit() else "50MB"
            command = "set_disk_free_limit"
            # more than any disk here
            disruption = disrupt([command, "100000GB"], [command, previous])
        else:
            raise ValueError(kind)
        raised.append(disruption)
        return disruption.undo

    try:
        yield alarm
    finally:
        errors = []
        for disruption in raised:
            try:
                disruption.undo()
            except Exception as e:  # still try the others
                errors.append(e)
        if errors:
            raise errors[0]


def alarms() -> str:
    return _eval("rabbit_alarm:get_alarms().")
