"""The `rabbitmesh` CLI as a user runs it: real processes against a running rabbitmesh."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.support.mesh import free_port

pytestmark = pytest.mark.integration


@dataclass
class Run:
    code: int
    out: str
    err: str


async def rabbitmesh(*args: str, server: str | None = None, **env: str) -> Run:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMESH_")}
    if server:
        full_env["RABBITMESH_SERVER"] = server
    full_env.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitmesh",
        *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Run(proc.returncode or 0, out.decode(), err.decode())


def one_error_line(run: Run) -> str:
    assert run.code != 0, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rabbitmesh: "), run.err
    return lines[0]


def rows(table: str) -> list[dict[str, str]]:
    """A kn-style table as dicts (columns are separated by 2+ spaces)."""
    lines = table.strip().splitlines()
    header = lines[0]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    out = []
    for line in lines[1:]:
        cells = [
            line[s : starts[n + 1] if n + 1 < len(starts) else None].strip()
            for n, s in enumerate(starts)
        ]
        out.append(dict(zip(names, cells, strict=True)))
    return out


async def test_a_new_user_session(start_mesh, make_sink, tmp_path):
    sink = await make_sink()
    mesh = await start_mesh("")
    s = mesh.url

    r = await rabbitmesh("broker", "create", "default", server=s)
    assert r.code == 0 and "Broker 'default' successfully created" in r.out, r
    r = await rabbitmesh("broker", "list", server=s)
    (row,) = rows(r.out)
    assert row["NAME"] == "default" and row["READY"] == "True"
    assert row["URL"] == mesh.settings.base_url + "/default/default"

    r = await rabbitmesh(
        "trigger",
        "create",
        "hi",
        "--filter",
        "type=com.example.hi",
        "--sink",
        sink.url,
        server=s,
    )
    assert r.code == 0, r
    r = await rabbitmesh("trigger", "list", server=s)
    (row,) = rows(r.out)
    assert (row["NAME"], row["BROKER"], row["SINK"], row["READY"]) == (
        "hi",
        "default",
        sink.url,
        "True",
    )
    r = await rabbitmesh(
        "send",
        "--to",
        "broker:default",
        "--type",
        "com.example.hi",
        "--source",
        "cli",
        "--data",
        '{"n": 1}',
        "--id",
        "cli-1",
        "--extension",
        "team=blue",
        server=s,
    )
    assert r.code == 0 and "cli-1" in r.out, r
    (got,) = await sink.wait_for(1)
    assert got.ce_id == "cli-1" and got.headers["ce-team"] == "blue"
    assert json.loads(got.body) == {"n": 1}

    r = await rabbitmesh("get", "triggers", "-o", "json", server=s)
    listed = json.loads(r.out)
    assert [t["metadata"]["name"] for t in listed["items"]] == ["hi"]
    r = await rabbitmesh("trigger", "describe", "hi", "-o", "yaml", server=s)
    assert yaml.safe_load(r.out)["spec"]["filter"] == {"attributes": {"type": "com.example.hi"}}
    r = await rabbitmesh(
        "trigger", "update", "hi", "--filter", "type-", "--sink", "svc:x", server=s
    )
    assert r.code == 0, r
    r = await rabbitmesh("trigger", "describe", "hi", server=s)
    assert "svc:x" in r.out and "Ready" in r.out

    manifests = tmp_path / "extra.yaml"
    manifests.write_text(
        """
apiVersion: eventing.knative.dev/v1beta2
kind: EventType
metadata: {name: hello}
spec: {type: com.example.hello, source: /greeter, broker: default}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  data: hi
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""
    )
    r = await rabbitmesh("apply", "-f", str(manifests), server=s)
    assert r.out.splitlines() == [
        "eventtype.eventing.knative.dev/hello created",
        "pingsource.sources.knative.dev/tick created",
    ], r
    r = await rabbitmesh("eventtype", "list", server=s)
    types = {row["TYPE"]: row for row in rows(r.out)}
    assert set(types) == {"com.example.hello", "dev.knative.sources.ping"}
    assert types["com.example.hello"]["REFERENCE"] == "broker:default"
    r = await rabbitmesh("source", "list", server=s)
    (row,) = rows(r.out)
    assert (row["NAME"], row["TYPE"], row["SINK"]) == ("tick", "PingSource", "broker:default")
    r = await rabbitmesh("delete", "-f", str(manifests), server=s)
    assert r.out.splitlines() == [
        'eventtype.eventing.knative.dev "hello" deleted',
        'pingsource.sources.knative.dev "tick" deleted',
    ]
    r = await rabbitmesh("eventtype", "list", server=s)
    assert r.out.strip() == "No eventtypes found in namespace 'default'."

    r = await rabbitmesh("channel", "create", "ch1", server=s)
    assert r.code == 0, r
    r = await rabbitmesh(
        "subscription", "create", "sub1", "--channel", "ch1", "--sink", sink.url, server=s
    )
    assert r.code == 0, r
    r = await rabbitmesh("channel", "list", server=s)
    (row,) = rows(r.out)
    assert (row["NAME"], row["READY"]) == ("ch1", "True")
    assert row["URL"].endswith("/channels/default/ch1")
    r = await rabbitmesh("subscription", "list", server=s)
    (row,) = rows(r.out)
    assert (row["NAME"], row["CHANNEL"], row["SUBSCRIBER"], row["READY"]) == (
        "sub1",
        "ch1",
        sink.url,
        "True",
    )
    r = await rabbitmesh(
        "send", "--to", "channel:ch1", "-t", "t", "-s", "cli", "--id", "via-ch", server=s
    )
    assert r.code == 0, r
    await sink.wait_for(2)
    assert sink.ids() == ["cli-1", "via-ch"]

    r = await rabbitmesh("trigger", "delete", "hi", server=s)
    assert "Trigger 'hi' successfully deleted" in r.out
    r = await rabbitmesh("delete", "broker", "default", server=s)
    assert r.out.strip() == 'broker.eventing.knative.dev "default" deleted'


async def test_errors_are_one_line_with_a_non_zero_exit(start_mesh):
    mesh = await start_mesh("")
    s = mesh.url
    port = free_port()
    line = one_error_line(await rabbitmesh("broker", "list", server=f"http://127.0.0.1:{port}"))
    assert line == (
        f"rabbitmesh: cannot reach the rabbitmesh API at http://127.0.0.1:{port}, from --server "
        "/ RABBITMESH_SERVER (connection refused); is `rabbitmesh run` running there? (for "
        "another rabbitmesh pass --server URL or set RABBITMESH_SERVER=URL)"
    )
    assert "unknown resource type 'gizmos'" in one_error_line(
        await rabbitmesh("get", "gizmos", server=s)
    )
    assert "--sink 'foo:bar'" in one_error_line(
        await rabbitmesh("trigger", "create", "t", "--sink", "foo:bar", server=s)
    )
    assert (await rabbitmesh("broker", "create", "b", server=s)).code == 0
    assert "already exists" in one_error_line(await rabbitmesh("broker", "create", "b", server=s))
    assert "not found" in one_error_line(await rabbitmesh("trigger", "describe", "no", server=s))
    line = one_error_line(
        await rabbitmesh(
            "source", "ping", "create", "p", "--schedule", "often", "--sink", "broker:b", server=s
        )
    )
    assert "spec.schedule" in line and "cron" in line
    bad = mesh.settings.config_dir.parent / "bad.yaml"
    bad.write_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: Bad}\n")
    line = one_error_line(await rabbitmesh("apply", "-f", str(bad), server=s))
    assert str(bad) in line and "metadata.name" in line
    line = one_error_line(
        await rabbitmesh("send", "--to", "broker:nope", "--type", "t", "--source", "s", server=s)
    )
    assert "404" in line and "nope" in line
    # A manifest file over the admin API's limit: the server answers 413 and stops reading, so
    # urllib (which sends the whole body first) may see a reset instead: either way the line
    # names the limit.
    huge = mesh.settings.config_dir.parent / "huge.yaml"
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s%d}\nstringData: {k: v}\n"
    huge.write_text("---\n".join(secret % i for i in range(60_000)))
    assert huge.stat().st_size > 3 * 1024 * 1024
    line = one_error_line(await rabbitmesh("apply", "-f", str(huge), server=s))
    assert "RABBITMESH_MAX_MANIFEST_BYTES" in line, line


async def test_the_admin_token(start_mesh):
    mesh = await start_mesh("", admin_token="t0ken")
    line = one_error_line(await rabbitmesh("broker", "create", "b", server=mesh.url))
    assert "RABBITMESH_ADMIN_TOKEN" in line
    r = await rabbitmesh("broker", "create", "b", server=mesh.url, RABBITMESH_ADMIN_TOKEN="t0ken")
    assert r.code == 0, r
    r = await rabbitmesh("broker", "list", server=mesh.url)  # reading needs no token
    assert rows(r.out)[0]["NAME"] == "b"


class SlowApi:
    """A real HTTP server that takes POST /apply and answers `delay` seconds later (never,
    with None): a rabbitmesh busy applying a big file."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.requests: list[str] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(request.query_string)
        if self.delay is None:
            await asyncio.Event().wait()  # never answers; cancelled when the client goes
        else:
            await asyncio.sleep(self.delay)  # the work takes this long (not a wait for a test)
        return web.json_response({"apiVersion": "v1", "kind": "List", "results": []})

    async def __aenter__(self) -> SlowApi:
        app = web.Application()
        app.router.add_post("/apply", self.handle)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _triggers(n: int) -> str:
    return "---\n".join(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
        f"metadata: {{name: t{i}}}\nspec: {{broker: b, subscriber: {{uri: 'http://x/'}}}}\n"
        for i in range(n)
    )


async def test_apply_says_the_server_took_the_request_when_it_times_out(tmp_path):
    """Was: `cannot reach the rabbitmesh API ... (timed out)` about a server that had taken
    the request and was applying 5,000 Triggers (issue 13)."""
    manifest = tmp_path / "t.yaml"
    manifest.write_text(_triggers(2))
    async with SlowApi(None) as api:
        run = await rabbitmesh(
            "apply", "-f", str(manifest), "--request-timeout", "0.5", server=api.url
        )
        line = one_error_line(run)
        assert api.requests == ["dryRun=All"]  # it got there
    assert line == (
        f"rabbitmesh: {manifest}: the rabbitmesh API at {api.url} took the request but did not "
        "answer within 0.5s; it may still complete (check with `rabbitmesh get`); "
        "--request-timeout waits longer"
    )
    assert "cannot reach" not in line


async def test_apply_waits_longer_for_a_file_of_more_documents(tmp_path, monkeypatch):
    """The default wait grows with the documents of the file: 30 s plus 50 ms each, so 5,000
    Triggers get over four minutes. Scaled down here (in-process, constants patched): a
    server answering after one second is waited for with 20 documents, not with one."""
    from click.testing import CliRunner

    from rabbitmesh.cli import cli, manifests

    assert manifests.apply_timeout(5000) >= 250
    monkeypatch.setattr(manifests, "TIMEOUT", 0.3)
    monkeypatch.setattr(manifests, "APPLY_SECONDS_PER_DOCUMENT", 0.2)
    one, many = tmp_path / "one.yaml", tmp_path / "many.yaml"
    one.write_text(_triggers(1))  # waits 0.5 s
    many.write_text(_triggers(20))  # waits 4.3 s

    def apply(path: Path) -> Any:
        return CliRunner().invoke(cli, ["apply", "-f", str(path), "--server", api.url])

    async with SlowApi(1.0) as api:
        result = await asyncio.to_thread(apply, many)
        assert result.exit_code == 0, result.output
        assert api.requests == ["dryRun=All", ""]
        result = await asyncio.to_thread(apply, one)
        assert result.exit_code == 1
        assert "did not answer within 0.5s" in result.output
