"""JobSink (sinks.knative.dev/v1alpha1): one run of the Job's container per event, with the
event as a file (docs/jobsink.md). Real broker, real processes, real restarts."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from rabbitmesh.metrics import jobsink_runs_total
from tests.support.events import binary_headers, post
from tests.support.mesh import InProcessMesh, write_manifests
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

#: The job: appends what it saw (mode, the event's id and data, the RABBITMESH_ variables it
#: inherited) as one JSON line to the file named in argv[1], prints a line, exits as told.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    event = json.load(open(os.environ["K_EVENT_PATH"]))
    seen = {
        "mode": os.environ.get("K_EXECUTION_MODE"),
        "path": os.environ["K_EVENT_PATH"],
        "id": event["id"],
        "data": event.get("data"),
        "rabbitmesh_env": sorted(k for k in os.environ if k.startswith("RABBITMESH_")),
        "greeting": os.environ.get("GREETING"),
    }
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(seen) + "\\n")
    print("processed", event["id"])
    sys.exit(int((event.get("data") or {}).get("exit", 0)))
    """
)


def jobsink(out: Path, name: str = "job", extra_container: str = "") -> str:
    script = out.parent / "job.py"
    script.write_text(SCRIPT)
    return f"""
        apiVersion: sinks.knative.dev/v1alpha1
        kind: JobSink
        metadata: {{name: {name}}}
        spec:
          job:
            apiVersion: batch/v1
            kind: Job
            spec:
              completions: 1
              template:
                spec:
                  restartPolicy: Never
                  containers:
                    - name: main
                      image: docker.io/library/python:3.11
                      command: ["{sys.executable}", "{script}"]
                      args: ["{out}"]
                      env: [{{name: GREETING, value: hello}}]
                      {extra_container}
        ---
        """


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []


async def send(url: str, name: str = "job", id_: str | None = None, **data: object):
    return await post(
        f"{url}/jobsinks/default/{name}",
        headers=binary_headers("job.requested", id_=id_),
        body=orjson.dumps(data),
    )


def runs(mesh: InProcessMesh, name: str = "job") -> list[dict]:
    res = mesh.server.ctx.get("JobSink", "default", name)
    return (res.status.model_extra or {}).get("jobs", {}).get("runs", [])


def finished(mesh: InProcessMesh, count: int, name: str = "job") -> list[dict]:
    done = [r for r in runs(mesh, name) if r["state"] == "finished"]
    return done if len(done) >= count else []


async def test_one_run_per_event_with_the_event_as_a_file(start_mesh, tmp_path):
    out = tmp_path / "out.jsonl"
    mesh = await start_mesh(jobsink(out))
    job = mesh.server.ctx.get("JobSink", "default", "job")
    assert job.status.ready == "True"
    assert job.status.address.url == mesh.settings.base_url + "/jobsinks/default/job"
    status, _, _ = await send(mesh.url, id_="e1", n=1)
    assert status == 202
    (run,) = await eventually(lambda: finished(mesh, 1), 20, what="the run's outcome")
    assert run["result"] == "Succeeded" and run["exitCode"] == 0
    assert run["id"] == "e1" and run["log"] == ["processed e1"]
    (seen,) = lines(out)
    assert seen["mode"] == "batch" and seen["id"] == "e1" and seen["data"] == {"n": 1}
    assert seen["greeting"] == "hello"
    assert seen["rabbitmesh_env"] == []  # no RABBITMESH_* (admin token, AMQP URL) leaks
    event_file = Path(seen["path"])
    assert not event_file.exists()  # noqa: ASYNC240 (the event file is gone after the run)


async def test_the_same_source_and_id_never_runs_twice(start_mesh, tmp_path):
    out = tmp_path / "out.jsonl"
    mesh = await start_mesh(jobsink(out), jobsink_parallelism=1)
    for id_ in ("a", "a", "b", "a"):
        status, _, _ = await send(mesh.url, id_=id_)
        assert status == 202
    await eventually(lambda: finished(mesh, 2), 20, what="two runs")
    # parallelism 1 and a FIFO queue: once "b" finished, the second "a" was handled; the
    # third is checked the same way by one more distinct run.
    await send(mesh.url, id_="c")
    await eventually(lambda: finished(mesh, 3), 20, what="three runs")
    assert sorted(s["id"] for s in lines(out)) == ["a", "b", "c"]


async def test_a_repeat_of_a_run_older_than_the_history_is_a_duplicate(start_mesh, tmp_path):
    """Finished runs beyond `jobsink_history` leave `runs` but stay known as started: a repeat
    of one was taken for a run interrupted by a dead replica and recorded as a failed,
    Interrupted run, although it had succeeded."""
    out = tmp_path / "out.jsonl"
    mesh = await start_mesh(jobsink(out), jobsink_parallelism=1, jobsink_history=1)
    for id_ in ("old", "new"):
        await send(mesh.url, id_=id_)
        await eventually(
            lambda id_=id_: [r for r in finished(mesh, 1) if r["id"] == id_], 20, what=id_
        )

    def count(result: str) -> float:
        return jobsink_runs_total.labels("default", "job", result)._value.get()

    before = {r: count(r) for r in ("duplicate", "interrupted")}
    await send(mesh.url, id_="old")  # a repeat of a run no longer in the history
    await eventually(
        lambda: any(count(r) > before[r] for r in before), 20, what="the repeat handled"
    )
    assert count("interrupted") == before["interrupted"]
    assert count("duplicate") == before["duplicate"] + 1
    assert [r["id"] for r in runs(mesh)] == ["new"]  # no Interrupted record for "old"
    assert sorted(s["id"] for s in lines(out)) == ["new", "old"]  # "old" ran once


async def test_a_failed_run_shows_its_exit_code_and_last_lines(start_mesh, tmp_path):
    out = tmp_path / "out.jsonl"
    mesh = await start_mesh(jobsink(out))
    await send(mesh.url, id_="bad", exit=3)
    (run,) = await eventually(lambda: finished(mesh, 1), 20, what="the failed run")
    assert run["result"] == "Failed" and run["exitCode"] == 3 and run["log"] == ["processed bad"]
    summary = mesh.server.ctx.get("JobSink", "default", "job").status.model_extra["jobs"]
    assert summary["failed"] == 1 and summary["succeeded"] == 0


async def test_queued_runs_survive_a_restart(tmp_path, prefix):
    """An ingress-only replica takes (202) events but runs nothing; stopped, and a full
    rabbitmesh started later on the same RabbitMQ, the queued runs still run."""
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config"
    write_manifests(config, jobsink(out))
    ingress = await InProcessMesh(config, prefix, role="ingress").start()
    try:
        for id_ in ("q1", "q2"):
            status, _, _ = await send(ingress.url, id_=id_)
            assert status == 202
    finally:
        await ingress.stop()
    assert lines(out) == []
    mesh = await InProcessMesh(config, prefix).start()
    try:
        await eventually(lambda: len(lines(out)) == 2, 20, what="the queued runs")
        assert sorted(s["id"] for s in lines(out)) == ["q1", "q2"]
    finally:
        await mesh.stop()


async def test_event_content_is_data_never_code(start_mesh, tmp_path):
    """Attack: an event whose id, source, extension and data are shell and `$(VAR)` syntax.
    The run gets them in the file only: nothing is executed, nothing is expanded."""
    out = tmp_path / "out.jsonl"
    pwned = tmp_path / "pwned"
    mesh = await start_mesh(jobsink(out))
    evil = f"$(touch {pwned}); `touch {pwned}` $(K_EVENT_PATH) && touch {pwned}"
    headers = binary_headers("job.requested", id_=f"x;touch {pwned}", source=evil, ext=evil)
    status, _, _ = await post(
        mesh.url + "/jobsinks/default/job", headers=headers, body=orjson.dumps({"cmd": evil})
    )
    assert status == 202
    (run,) = await eventually(lambda: finished(mesh, 1), 20, what="the run")
    assert run["result"] == "Succeeded"
    (seen,) = lines(out)
    assert seen["data"] == {"cmd": evil}
    assert not pwned.exists()


async def test_process_runtime_turned_off_takes_no_runs(start_mesh, tmp_path):
    out = tmp_path / "out.jsonl"
    mesh = await start_mesh(jobsink(out), allow_process_runtime=False)
    job = mesh.server.ctx.get("JobSink", "default", "job")
    assert job.status.ready == "False"
    assert job.status.conditions[0].reason == "RuntimeNotAllowed"
    status, _, body = await send(mesh.url, id_="no")
    assert status == 503 and b"RuntimeNotAllowed" in body


async def test_an_ingress_token_guards_who_may_start_runs(start_mesh, tmp_path):
    """Attack: anyone who reaches the ingress could start runs. With the annotation, only
    holders of a token from the Secret can; without the Secret, nobody (fail closed)."""
    out = tmp_path / "out.jsonl"
    guarded = jobsink(out).replace(
        "metadata: {name: job}",
        "metadata: {name: job, annotations: {rabbitmesh.dev/ingress-token-secret: tok}}",
    )
    other = tmp_path / "other"
    other.mkdir()
    closed = jobsink(other / "out.jsonl", name="closed").replace(
        "metadata: {name: closed}",
        "metadata: {name: closed, annotations: {rabbitmesh.dev/ingress-token-secret: none}}",
    )
    secret = """
        apiVersion: v1
        kind: Secret
        metadata: {name: tok}
        stringData: {token: run-it}
        ---
        """
    mesh = await start_mesh(guarded + secret + closed)
    status, headers, _ = await send(mesh.url, id_="anon")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await post(
        mesh.url + "/jobsinks/default/job",
        headers={**binary_headers("x", "auth"), "Authorization": "Bearer run-it"},
        body=b"{}",
    )
    assert status == 202
    await eventually(lambda: finished(mesh, 1), 20, what="the authorised run")
    assert [s["id"] for s in lines(out)] == ["auth"]
    shut = mesh.server.ctx.get("JobSink", "default", "closed")
    assert shut.status.ready == "False"
    assert shut.status.conditions[0].reason == "IngressTokenSecretMissing"
    status, _, _ = await send(mesh.url, name="closed", id_="x")
    assert status == 503


async def test_the_docker_runtime_mounts_the_event_where_knative_does(
    start_mesh, tmp_path, monkeypatch
):
    """Docker cannot run here: a stand-in `docker` on PATH records its argv and environment
    and reads the event through the host side of the `--volume` it was given."""
    calls = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "vol = next(a for a in sys.argv if a.startswith('--volume='))\n"
        "host, mount, mode = vol.removeprefix('--volume=').split(':')\n"
        "event = json.load(open(os.path.join(host, 'event')))\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'mount': mount, 'mode': mode,\n"
        "        'id': event['id'], 'K_EVENT_PATH': os.environ.get('K_EVENT_PATH'),\n"
        "        'K_EXECUTION_MODE': os.environ.get('K_EXECUTION_MODE')}) + '\\n')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    mesh = await start_mesh(
        """
        apiVersion: sinks.knative.dev/v1alpha1
        kind: JobSink
        metadata: {name: job}
        spec:
          job:
            spec:
              template:
                spec:
                  containers:
                    - name: main
                      image: docker.io/library/busybox:1.36
                      command: [sh, -c]
                      args: ['cat "$K_EVENT_PATH"']
        ---
        """,
        container_runtime="docker",
        docker_args="--network none",
    )
    status, _, _ = await send(mesh.url, id_="d1")
    assert status == 202
    (run,) = await eventually(lambda: finished(mesh, 1), 20, what="the docker run")
    assert run["result"] == "Succeeded"
    (call,) = [json.loads(x) for x in calls.read_text().splitlines()]
    assert call["mount"] == "/etc/jobsink-event" and call["mode"] == "ro"
    assert call["id"] == "d1"
    assert call["K_EVENT_PATH"] == "/etc/jobsink-event/event"
    assert call["K_EXECUTION_MODE"] == "batch"
    argv = call["argv"]
    assert argv[:2] == ["run", "--rm"] and "--network" in argv
    assert "--env=K_EVENT_PATH" in argv and "--env=K_EXECUTION_MODE" in argv
    assert argv[argv.index("--") :] == [
        "--",
        "docker.io/library/busybox:1.36",
        "-c",
        'cat "$K_EVENT_PATH"',
    ]
    assert "--entrypoint=sh" in argv


async def test_runs_beyond_the_parallelism_wait_in_the_queue(start_mesh, tmp_path, prefix):
    """RABBITMESH_JOBSINK_PARALLELISM=2 and four events whose runs block until released: two
    run, two wait in RabbitMQ (ready, undelivered), and all four finish once released."""
    from tests.support.rabbit import queue_depth

    gate = tmp_path / "release"
    script = tmp_path / "block.py"
    script.write_text(
        "import os, sys, time, json\n"
        "event = json.load(open(os.environ['K_EVENT_PATH']))\n"
        f"open(os.path.join({str(tmp_path)!r}, 'running-' + event['id']), 'w').close()\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.02)  # the job waiting for its release, not test synchronisation\n"
    )
    mesh = await start_mesh(
        f"""
        apiVersion: sinks.knative.dev/v1alpha1
        kind: JobSink
        metadata: {{name: job}}
        spec:
          job:
            spec:
              template:
                spec:
                  containers:
                    - {{name: main, command: ["{sys.executable}", "{script}"]}}
        ---
        """,
        jobsink_parallelism=2,
    )
    for i in range(4):
        status, _, _ = await send(mesh.url, id_=f"p{i}")
        assert status == 202

    def running() -> list[Path]:
        return sorted(tmp_path.glob("running-*"))

    await eventually(lambda: len(running()) == 2, 20, what="two runs started")
    queue = f"{prefix}.jobsink.default.job"
    # Two delivered (unacked, blocked), two still ready in the queue: the prefetch is the limit.
    await eventually(lambda: queue_depth(queue), 10, what="the queue's depth")
    assert await queue_depth(queue) == 2
    assert len(running()) == 2
    assert sum(r["state"] == "started" for r in runs(mesh)) == 2
    gate.touch()
    await eventually(lambda: finished(mesh, 4), 30, what="all four runs")
    assert len(running()) == 4
