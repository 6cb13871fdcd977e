"""ContainerSource (docs/contract.md §6): real supervised processes posting to real sinks, their
environment, their logs, restarts with backoff, stopping on delete and on update."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.api import SECRETS, call, ready
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CONTAINERSOURCES = "/apis/sources.knative.dev/v1/namespaces/{ns}/containersources"
PY = sys.executable


def container_source(name: str, sink: str, containers: list[dict], **extra: object) -> dict:
    meta: dict = {"name": name}
    if "annotations" in extra:
        meta["annotations"] = extra.pop("annotations")
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ContainerSource",
        "metadata": meta,
        "spec": {"template": {"spec": {"containers": containers}}, "sink": {"uri": sink}, **extra},
    }


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by init counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        # Read, not checked then read: the process can be reaped in between (a loaded run
        # failed on ProcessLookupError from reading the stat of a pid that just went).
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_heartbeats_run_as_a_process_and_post_to_the_sink(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: sources.knative.dev/v1
        kind: ContainerSource
        metadata: {{name: beats}}
        spec:
          template:
            spec:
              containers:
                - name: heartbeats
                  image: gcr.io/knative-releases/knative.dev/eventing/cmd/heartbeats
                  command: ["rabbitmesh", "heartbeats"]
                  args: ["--period=0.2", "--label=hello"]
          ceOverrides: {{extensions: {{team: green}}}}
          sink: {{uri: "{sink.url}"}}
        """
    )
    got = await sink.wait_for(2, timeout=20)
    for r in got[:2]:
        assert r.headers["ce-type"] == "dev.knative.eventing.samples.heartbeat"
        # NAME and NAMESPACE are the source's.
        assert (
            r.headers["ce-source"] == "https://knative.dev/eventing/cmd/heartbeats/#default/beats"
        )
        assert r.headers["ce-team"] == "green"  # from K_CE_OVERRIDES
        assert json.loads(r.body)["label"] == "hello"
    res = mesh.server.ctx.get("ContainerSource", "default", "beats")
    assert res.status.ready == "True"
    assert res.status.model_extra["sinkUri"] == sink.url


async def test_environment_logs_and_restarts_with_backoff(
    start_mesh, make_sink, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="rabbitmesh.sources.container")
    monkeypatch.setenv("RABBITMESH_CHILD_MUST_NOT_SEE", "not-for-children")
    sink = await make_sink()
    mesh = await start_mesh("")
    await call(
        "POST",
        mesh.url + SECRETS.format(ns="default"),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"password": "s3cret"},
        },
    )
    names = [
        "K_SINK",
        "K_CE_OVERRIDES",
        "NAME",
        "NAMESPACE",
        "GREETING",
        "POD_NAME",
        "POD_NAMESPACE",
        "PASSWORD",
        "RABBITMESH_CHILD_MUST_NOT_SEE",
    ]
    script = (
        "import os, sys\n"
        f"for k in {names!r}: print(k + '=' + os.environ.get(k, '<unset>'))\n"
        "print('argv=' + ' '.join(sys.argv[1:]))\n"
        "print('oops on stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    env = [
        {"name": "GREETING", "value": "hello $(NAME)"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
    ]
    status, body = await call(
        "POST",
        mesh.url + CONTAINERSOURCES.format(ns="default"),
        container_source(
            "envy",
            sink.url,
            [
                {
                    "name": "printer",
                    "command": [PY, "-c", script],
                    "args": ["--to=$(K_SINK)"],
                    "env": env,
                }
            ],
            ceOverrides={"extensions": {"team": "red"}},
        ),
    )
    assert status == 201, body
    tag = "source=ContainerSource default/envy container=printer: "

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.endswith("container")]

    def restarts() -> list[str]:
        return [line for line in lines() if "exited with status 3; restarting in" in line]

    await eventually(lambda: len(restarts()) >= 3, timeout=15, what="three restarts")
    printed = {line.removeprefix(tag) for line in lines() if line.startswith(tag)}
    assert {
        f"K_SINK={sink.url}",
        'K_CE_OVERRIDES={"extensions":{"team":"red"}}',
        "NAME=envy",
        "NAMESPACE=default",
        "GREETING=hello envy",
        "POD_NAME=envy",
        "POD_NAMESPACE=default",
        "PASSWORD=<redacted>",  # the process got it; the log did not
        "RABBITMESH_CHILD_MUST_NOT_SEE=<unset>",
        f"argv=--to={sink.url}",
        "oops on stderr",
    } <= printed, printed
    delays = [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in restarts()[:3]]
    assert delays == [0.5, 1.0, 2.0]
    message = await eventually(lambda: _ready_is(mesh, "envy", "BackOff"), what="BackOff")
    assert "printer exited with status 3" in message


async def test_deleting_or_changing_the_source_stops_its_process_group(
    start_mesh, make_sink, tmp_path: Path
):
    sink = await make_sink()
    mesh = await start_mesh("")
    pids = tmp_path / "pids"
    # The process starts a child of its own: stopping reaches the whole process group.
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}} {{child.pid}} {{sys.argv[1]}}\\n')\n"
        "time.sleep(600)\n"
    )
    url = mesh.url + CONTAINERSOURCES.format(ns="default")
    src = container_source("sleeper", sink.url, [{"command": [PY, "-c", script], "args": ["v1"]}])
    assert (await call("POST", url, src))[0] == 201

    def started() -> list[list[str]]:
        return [ln.split() for ln in pids.read_text().splitlines()] if pids.exists() else []

    (parent, child, version), *_ = await eventually(started, what="the process started")
    assert version == "v1"
    status, current = await call("GET", url + "/sleeper")
    current["spec"]["template"]["spec"]["containers"][0]["args"] = ["v2"]
    assert (await call("PUT", url + "/sleeper", current))[0] == 200
    await eventually(lambda: len(started()) == 2, what="the changed source restarted")
    new_parent, new_child, version = started()[1]
    assert version == "v2"
    await eventually(lambda: not alive(int(parent)) and not alive(int(child)), what="v1 stopped")
    assert (await call("DELETE", url + "/sleeper"))[0] == 200
    await eventually(
        lambda: not alive(int(new_parent)) and not alive(int(new_child)), what="v2 stopped"
    )


async def test_what_cannot_run_says_why_in_its_status(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh("")
    url = mesh.url + CONTAINERSOURCES.format(ns="default")
    no_secret = container_source(
        "no-secret",
        sink.url,
        [
            {
                "command": ["true"],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
            }
        ],
    )
    status, body = await call("POST", url, no_secret)
    assert ready(body) == ("False", "SecretNotFound")
    assert "'nope'" in body["status"]["conditions"][0]["message"]
    image_only = container_source("image-only", sink.url, [{"image": "ghcr.io/me/app:1"}])
    status, body = await call("POST", url, image_only)
    assert ready(body) == ("False", "InvalidSpec")
    assert "command" in body["status"]["conditions"][0]["message"]
    bad_runtime = container_source(
        "bad", sink.url, [{"command": ["true"]}], annotations={"rabbitmesh.dev/runtime": "podman"}
    )
    status, body = await call("POST", url, bad_runtime)
    assert status == 422 and "unknown runtime 'podman'" in body["error"]
    missing = container_source("missing", sink.url, [{"command": ["/nonexistent/app"]}])
    assert (await call("POST", url, missing))[0] == 201
    message = await eventually(
        lambda: _ready_is(mesh, "missing", "ContainerFailed"), what="ContainerFailed"
    )
    assert "cannot start" in message and "/nonexistent/app" in message
    status, body = await call("GET", url + "/missing")
    assert ready(body) == ("False", "ContainerFailed")


async def test_the_docker_runtime_runs_the_image_through_the_docker_cli(
    start_mesh, make_sink, tmp_path: Path, monkeypatch
):
    # Docker cannot run here: a stand-in `docker` on PATH records how it is called.
    calls = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(
        f"#!{PY}\n"
        "import json, os, sys, time\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps([sys.argv[1:], os.environ.get('K_SINK'), os.environ.get('X')]))\n"
        "    f.write('\\n')\n"
        "if sys.argv[1] == 'run':\n"
        "    time.sleep(600)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    sink = await make_sink()
    mesh = await start_mesh(
        "", container_runtime="docker", docker_args="--network host --pull never"
    )
    source = container_source(
        "app",
        sink.url,
        [
            {
                "name": "main",
                "image": "ghcr.io/me/app:1",
                "command": ["/app", "serve"],
                "args": ["--sink=$(K_SINK)"],
                "env": [{"name": "X", "value": "1"}],
            }
        ],
        annotations={"rabbitmesh.dev/runtime": "docker"},
    )
    status, body = await call("POST", mesh.url + CONTAINERSOURCES.format(ns="default"), source)
    assert status == 201 and ready(body) == ("True", None), body

    def invocations() -> list:
        return [json.loads(x) for x in calls.read_text().splitlines()] if calls.exists() else []

    await eventually(lambda: len(invocations()) >= 2, what="docker rm and docker run")
    (rm, _, _), (run, k_sink, x) = invocations()[:2]
    assert rm[:2] == ["rm", "-f"]
    name = rm[2]
    assert name.startswith("rabbitmesh-default-app-main-")
    assert run == [
        "run",
        "--rm",
        f"--name={name}",
        "--label=dev.rabbitmesh.source=default/app",
        "--network",
        "host",
        "--pull",
        "never",
        "--env=NAME",
        "--env=NAMESPACE",
        "--env=X",
        "--env=K_SINK",
        "--env=K_CE_OVERRIDES",
        "--entrypoint=/app",
        "--",
        "ghcr.io/me/app:1",
        "serve",
        f"--sink={sink.url}",
    ]
    # Values travel in the docker CLI's environment, not on its command line.
    assert (k_sink, x) == (sink.url, "1")


async def test_docker_containers_of_different_sources_never_share_a_name(
    start_mesh, make_sink, tmp_path: Path, monkeypatch
):
    # Security (issue 11, item 13): `team-a`/`sync` and `team`/`a-sync` were both
    # `rabbitmesh-team-a-sync-main`, and each start's `docker rm -f` removed the other's.
    calls = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(
        f"#!{PY}\n"
        "import json, sys, time\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1] == 'run':\n"
        "    time.sleep(600)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    sink = await make_sink()
    mesh = await start_mesh("", container_runtime="docker")
    docker = {"rabbitmesh.dev/runtime": "docker"}
    for ns, name in (("team-a", "sync"), ("team", "a-sync")):
        source = container_source(
            name, sink.url, [{"name": "main", "image": "ghcr.io/me/app:1"}], annotations=docker
        )
        status, body = await call("POST", mesh.url + CONTAINERSOURCES.format(ns=ns), source)
        assert status == 201, body

    def removed() -> list[str]:
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [argv[2] for argv in map(json.loads, lines) if argv[:2] == ["rm", "-f"]]

    await eventually(lambda: len(removed()) >= 2, what="both containers started")
    assert len(set(removed())) == 2, removed()

    # An image is an image reference, never an option of `docker run`.
    for image in ("--privileged", "-v/:/host"):
        bad = container_source(
            "opt", sink.url, [{"name": "main", "image": image}], annotations=docker
        )
        status, body = await call("POST", mesh.url + CONTAINERSOURCES.format(ns="default"), bad)
        assert status == 422, body
        assert "spec.template.spec.containers[0].image" in body["error"], body
    assert not any("--privileged" in line for line in calls.read_text().splitlines())


async def test_secret_values_never_reach_the_log(start_mesh, make_sink, caplog, tmp_path: Path):
    # Security (issue 11, item 5): `args: ["3600", "$(TOKEN)"]` with TOKEN from a Secret was
    # logged expanded at INFO, and the process's own lines echoing it were relayed verbatim.
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-Sup3r-s3cret"
    sink = await make_sink()
    mesh = await start_mesh("")
    status, body = await call(
        "POST",
        mesh.url + SECRETS.format(ns="default"),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "api"},
            "stringData": {"token": secret},
        },
    )
    assert status == 201, body
    got = tmp_path / "got"
    script = (
        "import os, sys\n"
        f"open({str(got)!r}, 'w').write(sys.argv[2] + ' ' + os.environ['AUTH'])\n"
        "print('argv:', sys.argv[1:], file=sys.stderr)\n"
        "print('error: bad token ' + os.environ['TOKEN'] + '!')\n"
        "print('done')\n"
        "sys.exit(1)\n"
    )
    source = container_source(
        "leaky",
        sink.url,
        [
            {
                "name": "app",
                "command": [PY, "-c", script],
                "args": ["3600", "$(TOKEN)", "--auth=$(AUTH)"],
                "env": [
                    {
                        "name": "TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}},
                    },
                    {"name": "AUTH", "value": "Bearer $(TOKEN)"},
                ],
            }
        ],
    )
    status, body = await call("POST", mesh.url + CONTAINERSOURCES.format(ns="default"), source)
    assert status == 201, body
    tag = "source=ContainerSource default/leaky container=app: "

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    await eventually(lambda: f"{tag}done" in lines(), what="the process's output relayed")
    # The process got the real value ...
    assert got.read_text() == f"{secret} Bearer {secret}"
    # ... and the log has none of it, in the argv it logged nor in the lines it relayed.
    assert not [line for line in lines() if secret in line]
    started = next(line for line in lines() if line.startswith(f"{tag}started"))
    assert started.endswith("3600 '<redacted>' '--auth=Bearer <redacted>'"), started
    assert f"{tag}error: bad token <redacted>!" in lines()


def _ready_is(mesh, name: str, reason: str) -> str | None:
    res = mesh.server.ctx.get("ContainerSource", "default", name)
    cond = next((c for c in res.status.conditions if c.type == "Ready"), None)
    if cond is not None and cond.reason == reason:
        return cond.message
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
async def test_processes_die_with_a_killed_rabbitmesh(tmp_path: Path, prefix):
    # A SIGKILLed rabbitmesh must not leave its processes behind: the next leader starts its
    # own copies, and orphans would post every event twice.
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    write_manifests(
        tmp_path / "config",
        f"""
        apiVersion: sources.knative.dev/v1
        kind: ContainerSource
        metadata: {{name: orphan}}
        spec:
          template: {{spec: {{containers: [{{command: [{PY!r}, "-c", {script!r}]}}]}}}}
          sink: {{uri: "http://127.0.0.1:9/"}}
        """,
    )
    mesh = await MeshProcess(tmp_path / "config", prefix).start()
    try:
        pid = int(await eventually(lambda: pid_file.exists() and pid_file.read_text()))
        assert alive(pid)
        mesh.signal(signal.SIGKILL)
        await mesh.wait()
        await eventually(lambda: not alive(pid), what="the process gone with rabbitmesh")
    finally:
        await mesh.stop()
