"""config/examples/{eventtransform,requestreply,jobsink}.yaml as a user runs them: `rabbitmesh
run` (a real process) with the file as its config, the curl command of the file's header, and
for the JobSink `rabbitmesh jobsink runs`."""

from __future__ import annotations

import asyncio
import shlex

import pytest

from tests.integration.test_cli import rabbitmesh
from tests.integration.test_examples import EXAMPLES, curl_command, example, run_curl  # noqa: F401
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_eventtransform_example(example):  # noqa: F811
    mesh, tools, text = await example("eventtransform.yaml")
    assert await run_curl(curl_command(text, mesh.url)) == 202
    (printed,) = await tools[9501].wait_for_events(1)
    assert "type: order.shaped" in printed
    assert '"customer": "Ada"' in printed and '"total": 5.5' in printed


async def curl_output(text: str, url: str) -> tuple[int, str]:
    command = curl_command(text, url)
    # the same curl, printing the body and the status
    command = [c for c in command if c not in ("-o", "/dev/null")]
    command[command.index("-w") + 1] = "\n%{http_code}"
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def test_requestreply_example(tmp_path, prefix):
    text = (EXAMPLES / "requestreply.yaml").read_text()
    write_manifests(tmp_path / "config", text)
    mesh = await MeshProcess(tmp_path / "config", prefix).start()
    try:
        code, body = await curl_output(text, mesh.url)
        assert code == 200, body
        assert body.endswith('{"greeting":"Hello, Ada!"}') and "ce-type: greeting.reply" in body
    finally:
        await mesh.stop()


async def test_jobsink_example(tmp_path, prefix):
    text = (EXAMPLES / "jobsink.yaml").read_text()
    write_manifests(tmp_path / "config", text)
    mesh = await MeshProcess(tmp_path / "config", prefix).start()
    try:
        assert await run_curl(curl_command(text, mesh.url)) == 202
        runs_line = next(
            line.lstrip("#").strip() for line in text.splitlines() if "jobsink runs" in line
        )
        args = shlex.split(runs_line)[1:]

        async def logged() -> str:
            out = (await rabbitmesh(*args, server=mesh.url)).out
            return out if "Succeeded" in out else ""

        out = await eventually(logged, 30, what="the run in `rabbitmesh jobsink runs`")
        assert "| mode=batch" in out and '"report":"monthly"' in out.replace(" ", "")
    finally:
        await mesh.stop()
