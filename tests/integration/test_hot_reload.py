"""The config dir is re-applied when a file changes, within seconds, without touching what
the API created; replicas sharing a config dir do not fight over it."""

from __future__ import annotations

import logging
import textwrap

import pytest

from tests.support.api import BROKERS, TRIGGERS, broker, call, ready
from tests.support.manifests import broker_and_trigger
from tests.support.rabbit import list_names
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BASE = broker_and_trigger("http://127.0.0.1:9/", trigger="tr1", filter_type="a")
TR2 = """
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: tr2}
spec: {broker: br, subscriber: {uri: "http://127.0.0.1:9/"}}
"""


async def get(mesh, path: str) -> tuple[int, dict]:
    return await call("GET", mesh.url + path)


async def test_changes_to_files_are_applied_and_removals_deleted(start_mesh, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rabbitmesh")
    mesh = await start_mesh(BASE)
    config = mesh.settings.config_dir / "manifests.yaml"
    triggers = TRIGGERS.format(ns="default")
    assert (await call("POST", mesh.url + BROKERS.format(ns="default"), broker("api")))[0] == 201

    config.write_text(BASE.replace("type: a", "type: b") + TR2)

    async def reloaded() -> bool:
        status, tr2 = await get(mesh, triggers + "/tr2")
        _, tr1 = await get(mesh, triggers + "/tr1")
        return status == 200 and ready(tr2)[0] == "True" and tr1["metadata"]["generation"] == 2

    await eventually(reloaded, timeout=5, what="the edited file applied")
    _, tr1 = await get(mesh, triggers + "/tr1")
    assert tr1["spec"]["filter"] == {"attributes": {"type": "b"}}

    queue2 = f"{mesh.settings.topology_prefix}.trigger.default.tr2"
    assert list_names("queues", queue2) == [queue2]  # no sink: no `:dlq` until needed
    config.write_text(BASE)  # tr2's document is gone
    await eventually(
        lambda: _status(get(mesh, triggers + "/tr2"), 404), timeout=5, what="tr2 deleted"
    )
    assert list_names("queues", queue2) == []

    config.write_text(BASE + "---\nkind: Trigger\nmetadata: {name: broken}\n")
    await eventually(
        lambda: "config dir not reloaded" in caplog.text, timeout=5, what="one error line"
    )
    # The same broken content must not be reported again at every poll: let a few more polls
    # pass before counting.
    polls = mesh.server.plane.config.polls
    await eventually(
        lambda: mesh.server.plane.config.polls >= polls + 4, timeout=10, what="4 more polls"
    )
    errors = [r for r in caplog.records if "config dir not reloaded" in r.getMessage()]
    assert len(errors) == 1 and "document 3" in errors[0].getMessage()
    assert (await get(mesh, triggers + "/tr1"))[0] == 200  # the last good state stays

    (mesh.settings.config_dir / "more.yaml").write_text(
        textwrap.dedent(TR2.replace("tr2", "tr3").lstrip("\n-"))
    )
    config.write_text(BASE)
    await eventually(
        lambda: _status(get(mesh, triggers + "/tr3"), 200), timeout=5, what="fixed and applied"
    )
    # The broker created through the API was never touched.
    status, api = await get(mesh, BROKERS.format(ns="default") + "/api")
    assert status == 200 and api["metadata"]["generation"] == 1
    entry = mesh.server.plane.store.get(("Broker", "default", "api"))
    assert entry.origin == "api"
    assert mesh.server.plane.store.get(("Trigger", "default", "tr3")).source == "more.yaml"


async def _status(response, expected: int) -> bool:
    return (await response)[0] == expected


async def test_replicas_with_the_same_config_dir_do_not_fight(start_mesh, tmp_path):
    a = await start_mesh(BASE)
    b = await start_mesh(BASE)  # same prefix (one install), a config dir with the same files
    store = a.server.plane.store
    settled = store.state.last_offset
    polls = a.server.plane.config.polls, b.server.plane.config.polls
    await eventually(
        lambda: (
            a.server.plane.config.polls >= polls[0] + 4
            and b.server.plane.config.polls >= polls[1] + 4
        ),
        timeout=10,
        what="both replicas polled their config dirs a few times",
    )
    assert store.state.last_offset == settled  # nothing written: the content is the same
    assert b.server.plane.store.state.last_offset == settled
