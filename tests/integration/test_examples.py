"""The seed's channel and flow examples (config/examples/), end to end as a user runs them:
`rabbitmesh run` and every helper service are real processes, started with the very commands
written in each example's header, and the event-display output is what is checked."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

import pytest

from tests.support.events import post_binary
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.tools import ToolProcess

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
HELPER = re.compile(r"^#\s+rabbitmesh (?P<args>.+) --port (?P<port>\d+) &$")


def header_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def curl_command(text: str, mesh_url: str) -> list[str]:
    """The example's curl command (continuation lines joined), aimed at this test's mesh."""
    lines, taking = [], False
    for line in header_lines(text):
        body = line.lstrip("#").strip()
        taking = taking or body.startswith("curl ")
        if taking:
            lines.append(body.rstrip("\\").strip())
            if not body.endswith("\\"):
                break
    args = shlex.split(" ".join(lines).replace("localhost:8080", mesh_url.removeprefix("http://")))
    return [args[0], "-s", "-o", "/dev/null", "-w", "%{http_code}", *args[1:]]


@pytest.fixture
async def example(tmp_path, prefix, start_tool):
    """Run config/examples/<file>: its helpers, then rabbitmesh with it; returns the pieces."""
    meshes: list[MeshProcess] = []

    async def run(file: str) -> tuple[MeshProcess, dict[int, ToolProcess], str]:
        text = (EXAMPLES / file).read_text()
        helpers = [HELPER.match(line) for line in header_lines(text)]
        commands = [(int(m["port"]), shlex.split(m["args"])) for m in helpers if m]
        assert commands, f"{file} documents no helper commands"
        tools = await asyncio.gather(*(start_tool(*args) for _, args in commands))
        by_port = {port: tool for (port, _), tool in zip(commands, tools, strict=True)}
        manifests = text
        for port, tool in by_port.items():
            manifests = manifests.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{tool.port}/")
        write_manifests(tmp_path / "config", manifests)
        mesh = await MeshProcess(tmp_path / "config", prefix).start()
        meshes.append(mesh)
        return mesh, by_port, text

    yield run
    for m in meshes:
        await m.stop()


async def run_curl(command: list[str]) -> int:
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return int(out.decode())


async def test_example1_channel_with_two_subscriptions(example):
    mesh, tools, text = await example("example1-channel.yaml")
    assert await run_curl(curl_command(text, mesh.url)) == 202
    for port in (9101, 9102):
        (printed,) = await tools[port].wait_for_events(1)
        assert "type: com.hj.channel" in printed
        assert '"message": "hello, channel"' in printed


async def test_example3_sequence_of_appenders(example):
    mesh, tools, text = await example("example3-sequence.yaml")
    assert await run_curl(curl_command(text, mesh.url)) == 202
    (printed,) = await tools[9300].wait_for_events(1)
    assert (
        "hello, sequence flow - Handled by SQ-01 - Handled by SQ-02 - Handled by SQ-03" in printed
    )
    assert printed.startswith("☁️  cloudevents.Event\nContext Attributes,\n  specversion: 1.0\n")
    assert "  type: com.hj.sequence\n  source: curl\n  id: 1\n" in printed


async def test_example4_parallel_routes_each_type_to_its_branch_only(example):
    mesh, tools, text = await example("example4-parallel.yaml")
    display, image, text_appender = tools[9400], tools[9403], tools[9404]
    assert await run_curl(curl_command(text, mesh.url)) == 202  # an img.hj.com event
    status, _ = await post_binary(
        mesh.url + "/parallels/default/parallel", "text.hj.com", {"message": "some text"}
    )
    assert status == 202
    printed = await display.wait_for_events(2)
    img = [p for p in printed if "type: img.hj.com" in p]
    txt = [p for p in printed if "type: text.hj.com" in p]
    assert len(img) == 1 and '"message": "a picture - filetype/Image"' in img[0]
    assert len(txt) == 1 and '"message": "some text - filetype/Text"' in txt[0]
    assert "filetype/Text" not in img[0] and "filetype/Image" not in txt[0]
    # Each appender saw only its own type (they log one line per event).
    assert image.stderr().count("appended") == 1 and "(type img.hj.com)" in image.stderr()
    assert text_appender.stderr().count("appended") == 1
    assert "(type text.hj.com)" in text_appender.stderr()
