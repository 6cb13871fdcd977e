"""`rabbitmesh eventtransform|requestreply|jobsink` as a user runs them (real processes)."""

from __future__ import annotations

import json
import sys

import orjson
import pytest

from tests.integration.test_cli import one_error_line, rabbitmesh, rows
from tests.support.events import binary_headers, post
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BROKER = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: default}
    ---
    """


async def test_create_list_describe_delete_and_runs(start_mesh, tmp_path):
    mesh = await start_mesh(BROKER)
    url = mesh.url
    expr = tmp_path / "shape.jsonata"
    expr.write_text(
        '{"specversion": "1.0", "id": id, "source": source, "type": "t2", "data": data}'
    )
    run = await rabbitmesh(
        "eventtransform", "create", "shape", "--expression-file", str(expr), server=url
    )
    assert run.code == 0, run.err
    run = await rabbitmesh(
        "requestreply", "create", "ask", "--broker", "default", "--timeout", "PT5S", server=url
    )
    assert run.code == 0, run.err
    out = tmp_path / "ran"
    copy = f"import os,shutil; shutil.copy(os.environ['K_EVENT_PATH'], '{out}')"
    command = f'{sys.executable} -c "{copy}"'
    run = await rabbitmesh(
        "jobsink", "create", "copy", "--image", "python:3.11", "--command", command, server=url
    )
    assert run.code == 0, run.err

    (row,) = rows((await rabbitmesh("eventtransform", "list", server=url)).out)
    assert row["NAME"] == "shape" and row["READY"] == "True" and row["SINK"] == "(reply)"
    assert row["URL"].endswith("/eventtransforms/default/shape")
    (row,) = rows((await rabbitmesh("requestreply", "list", server=url)).out)
    assert row["BROKER"] == "default" and row["TIMEOUT"] == "PT5S" and row["READY"] == "True"
    described = (await rabbitmesh("requestreply", "describe", "ask", server=url)).out
    assert "correlationid" in described and "replyid" in described
    (row,) = rows((await rabbitmesh("jobsink", "list", server=url)).out)
    assert row["READY"] == "True"

    status, _, _ = await post(
        url + "/jobsinks/default/copy",
        headers=binary_headers("x", "j1"),
        body=orjson.dumps({"a": 1}),
    )
    assert status == 202
    await eventually(lambda: out.exists(), 20, what="the run")
    assert json.loads(out.read_text())["id"] == "j1"

    async def finished() -> list[dict[str, str]]:
        table = (await rabbitmesh("jobsink", "runs", "copy", server=url)).out
        return [r for r in rows(table) if r["STATE"] == "finished"] if "RUN" in table else []

    (r,) = await eventually(finished, 20, what="the run in `jobsink runs`")
    assert r["ID"] == "j1" and r["RESULT"] == "Succeeded" and r["EXIT"] == "0"
    as_json = json.loads(
        (await rabbitmesh("jobsink", "runs", "copy", "-o", "json", server=url)).out
    )
    assert as_json[0]["exitCode"] == 0

    for kind, name in (("eventtransform", "shape"), ("requestreply", "ask"), ("jobsink", "copy")):
        assert (await rabbitmesh(kind, "delete", name, server=url)).code == 0
        assert (
            "not found"
            in one_error_line(await rabbitmesh(kind, "describe", name, server=url)).lower()
        )


async def test_webhook_validation_through_the_cli(start_mesh):
    mesh = await start_mesh(BROKER)
    line = one_error_line(
        await rabbitmesh("eventtransform", "create", "bad", "--expression", "{", server=mesh.url)
    )
    assert "spec.jsonata.expression" in line
    line = one_error_line(
        await rabbitmesh(
            "eventtransform",
            "create",
            "bad",
            "--expression",
            "$",
            "--reply-discard",
            server=mesh.url,
        )
    )
    assert "spec.reply" in line and "without spec.sink" in line
    line = one_error_line(
        await rabbitmesh(
            "requestreply",
            "create",
            "r",
            "--broker",
            "default",
            "--timeout",
            "30s",
            server=mesh.url,
        )
    )
    assert "spec.timeout" in line


async def test_apply_and_get_knatives_manifests(start_mesh):
    from tests.integration.test_examples import EXAMPLES

    mesh = await start_mesh("")
    for file in ("eventtransform.yaml", "requestreply.yaml", "jobsink.yaml"):
        run = await rabbitmesh("apply", "-f", str(EXAMPLES / file), server=mesh.url)
        assert run.code == 0, run.err
    for kind, name in (
        ("eventtransforms", "order-shape"),
        ("requestreplies", "greeter"),
        ("jobsinks", "job-logger"),
    ):
        got = json.loads((await rabbitmesh("get", kind, name, "-o", "json", server=mesh.url)).out)
        assert got["metadata"]["name"] == name
        assert got["status"]["address"]["url"].startswith(mesh.settings.base_url)
