"""The admin API's `?watch=true` (resumable JSON-lines stream) and merge-patch PATCH."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aiohttp
import orjson

from tests.support.api import BROKERS, TRIGGERS, broker, call, ready, trigger
from tests.support.mesh import InProcessMesh
from tests.support.waiting import eventually

SINK = "http://127.0.0.1:9/unused"
MANIFESTS = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: b, namespace: default}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t0, namespace: default}
spec: {broker: b, subscriber: {uri: 'http://127.0.0.1:9/unused'}}
"""


class Watch:
    """A watch request read line by line."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession()
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> Watch:
        self.response = await self.session.get(self.url)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.response is not None:
            self.response.close()
        await self.session.close()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.response is not None
        line = await asyncio.wait_for(self.response.content.readline(), timeout)
        assert line, "the watch stream ended"
        return orjson.loads(line)


def triggers(mesh: InProcessMesh) -> str:
    return mesh.url + TRIGGERS.format(ns="default")


async def test_watch_streams_added_modified_deleted_and_resumes(start_mesh) -> None:
    mesh = await start_mesh(MANIFESTS)
    async with Watch(triggers(mesh) + "?watch=true") as w:
        assert w.response is not None and w.response.status == 200
        first = await w.next()
        assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "t0"
        status, _ = await call("POST", triggers(mesh), trigger("t1", "b", SINK))
        assert status == 201
        added = await w.next()
        assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == "t1"
        assert ready(added["object"]) == ("True", "TriggerReady")  # as reconciled
        # Other kinds do not show in a Trigger watch.
        assert (await call("POST", mesh.url + BROKERS.format(ns="default"), broker("x")))[0] == 201
        status, _ = await call("DELETE", triggers(mesh) + "/t1")
        assert status == 200
        deleted = await w.next()
        assert deleted["type"] == "DELETED" and deleted["object"]["metadata"]["name"] == "t1"
    version = added["object"]["metadata"]["resourceVersion"]

    # Resuming from t1's creation replays what came after it, and only that.
    status, _ = await call("PUT", triggers(mesh) + "/t0", trigger("t0", "b", SINK + "2"))
    assert status == 200
    async with Watch(triggers(mesh) + f"?watch=true&resourceVersion={version}") as w:
        replay = [await w.next(), await w.next()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replay] == [
        ("DELETED", "t1"),
        ("MODIFIED", "t0"),
    ]
    assert replay[1]["object"]["spec"]["subscriber"]["uri"] == SINK + "2"

    # A list's resourceVersion is a valid starting point; a bad one is a 400.
    _, listed = await call("GET", triggers(mesh))
    assert int(listed["metadata"]["resourceVersion"]) >= int(version)
    status, body = await call("GET", triggers(mesh) + "?watch=true&resourceVersion=x")
    assert status == 400 and "resourceVersion" in body["error"]


async def test_watch_ends_after_timeout_seconds(start_mesh) -> None:
    mesh = await start_mesh(MANIFESTS)
    async with aiohttp.ClientSession() as s:
        async with s.get(triggers(mesh) + "?watch=true&timeoutSeconds=1") as r:
            body = await asyncio.wait_for(r.read(), 10)
    lines = [orjson.loads(x) for x in body.splitlines()]
    assert [e["type"] for e in lines] == ["ADDED"]


async def test_merge_patch(start_mesh) -> None:
    mesh = await start_mesh(MANIFESTS)
    url = triggers(mesh) + "/t0"
    headers = {"Content-Type": "application/merge-patch+json"}
    patch = {"spec": {"filter": {"attributes": {"type": "com.example.a"}}}}
    async with aiohttp.ClientSession() as s:
        async with s.patch(url, data=orjson.dumps(patch), headers=headers) as r:
            assert r.status == 200, await r.text()
            out = await r.json()
        assert out["spec"]["filter"] == {"attributes": {"type": "com.example.a"}}
        assert out["spec"]["subscriber"] == {"uri": SINK}  # untouched
        assert out["metadata"]["generation"] == 2
        assert out["status"]["observedGeneration"] == 2
        # null removes a field (RFC 7386).
        patch = {"spec": {"filter": None}, "metadata": {"labels": {"team": "a"}}}
        async with s.patch(url, data=orjson.dumps(patch), headers=headers) as r:
            assert r.status == 200
            out = await r.json()
        assert "filter" not in out["spec"] and out["metadata"]["labels"] == {"team": "a"}
        # Other patch types are refused with the one that works.
        json_patch = {"Content-Type": "application/json-patch+json"}
        async with s.patch(url, data=b"[]", headers=json_patch) as r:
            assert r.status == 415
            assert r.headers["Accept-Patch"] == "application/merge-patch+json"
        # An invalid result is a 422 naming the field; a missing object a 404.
        bad = {"spec": {"broker": None}}
        async with s.patch(url, data=orjson.dumps(bad), headers=headers) as r:
            assert r.status == 422, await r.text()
            assert "broker" in (await r.json())["error"]
        async with s.patch(triggers(mesh) + "/nope", data=b"{}", headers=headers) as r:
            assert r.status == 404


async def test_cli_patch_and_get_watch(start_mesh) -> None:
    mesh = await start_mesh(MANIFESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMESH_")}
    env["RABBITMESH_SERVER"] = mesh.url
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rabbitmesh", "get", "triggers", "-w",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None

        async def line() -> str:
            return (await asyncio.wait_for(watcher.stdout.readline(), 20)).decode()

        assert line_cells(await line())[:2] == ["EVENT", "NAME"]
        assert line_cells(await line())[:2] == ["ADDED", "t0"]
        patched = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rabbitmesh", "patch", "trigger", "t0",
            "-p", '{"spec": {"subscriber": {"uri": "http://127.0.0.1:9/b"}}}',
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(patched.communicate(), 60)
        assert patched.returncode == 0, err
        assert out.decode().strip() == "trigger.eventing.knative.dev/t0 patched"
        modified = line_cells(await line())
        assert modified[:2] == ["MODIFIED", "t0"] and "http://127.0.0.1:9/b" in modified
    finally:
        watcher.kill()
        await watcher.wait()
    _, got = await call("GET", triggers(mesh) + "/t0")
    assert got["spec"]["subscriber"] == {"uri": "http://127.0.0.1:9/b"}


def line_cells(text: str) -> list[str]:
    return text.split()


async def test_watch_streams_are_capped_and_a_departed_client_frees_its_slot(start_mesh) -> None:
    """Watching is open to anyone who can reach the port: past RABBITMESH_MAX_WATCHES streams
    a watch gets 429 with Retry-After (not memory and a fan-out per change for each), and a
    client that goes away frees its slot although nothing changed since."""
    mesh = await start_mesh(MANIFESTS, max_watches=2)
    url = triggers(mesh) + "?watch=true"
    async with Watch(url) as first, Watch(url) as second:
        assert (await first.next())["type"] == "ADDED"
        assert (await second.next())["type"] == "ADDED"
        async with aiohttp.ClientSession() as s, s.get(url) as third:
            assert third.status == 429
            assert third.headers["Retry-After"] == "2"
            assert "RABBITMESH_MAX_WATCHES" in (await third.json())["error"]
    assert mesh.server.plane is not None
    watch_log = mesh.server.plane.watch
    await eventually(lambda: watch_log.watching == 0, timeout=30, what="departed watchers freed")
    async with Watch(url) as again:
        assert again.response is not None and again.response.status == 200


async def test_hostile_watch_and_patch_parameters_get_400_not_a_traceback(start_mesh) -> None:
    mesh = await start_mesh(MANIFESTS)
    status, body = await call("GET", triggers(mesh) + "?watch=true&timeoutSeconds=" + "9" * 400)
    assert status == 400 and "timeoutSeconds" in body["error"], body
    # Merging recursed once per level: 995 levels were a RecursionError, a 500.
    deep = b'{"metadata":{"labels":' + b'{"a":' * 995 + b"{}" + b"}" * 995 + b"}}"
    async with aiohttp.ClientSession() as s:
        async with s.patch(
            triggers(mesh) + "/t0",
            data=deep,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            assert r.status == 400, await r.text()
            assert "nested deeper than 100 levels" in (await r.json())["error"]
