"""The example guides (docs/examples/*.md) run as written.

The commands are read from the guides' `sh` blocks, not copied here: the helpers are started
with their own arguments (on ports the OS picks, rewritten in a copy of config/examples/),
`rabbitmesh apply -f config/examples/...` and `RABBITMESH_CONFIG_DIR=config/examples
rabbitmesh run` run from a directory holding that copy, the CLI finds rabbitmesh through
`RABBITMESH_HTTP_PORT` as a user's shell would, and the guide's curl commands go to it. What
the guide says the event-display prints is what is checked.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.test_examples import HELPER, header_lines
from tests.integration.test_sources_examples import rabbitmesh_on_path
from tests.support.mesh import MeshProcess
from tests.support.tools import EVENT_HEADER, ToolProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GUIDES = sorted((REPO / "docs" / "examples").glob("example*.md"))


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, content) of each fenced code block, in order."""
    blocks, info, lines = [], None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if info is None:
                info, lines = line[3:].strip(), []
            else:
                blocks.append((info, "".join(lines)))
                info = None
        elif info is not None:
            lines.append(line)
    return blocks


@dataclass
class Guide:
    helpers: list[tuple[int, list[str]]] = field(default_factory=list)  # (port, args)
    apply: list[list[str]] = field(default_factory=list)
    run: list[list[str]] = field(default_factory=list)
    curls: list[list[str]] = field(default_factory=list)
    printed: list[list[str]] = field(default_factory=list)  # expected event-display output


def read_guide(path: Path) -> Guide:
    text = path.read_text()
    guide = Guide()
    blocks = fenced_blocks(text)
    for block in (content for info, content in blocks if info == "sh"):
        for command in block.replace("\\\n", " ").splitlines():
            args = shlex.split(command, comments=True)
            if not args:
                continue
            if args[0] == "curl":
                guide.curls.append(args)
            elif args[-1] == "&" and args[-3] == "--port":
                guide.helpers.append((int(args[-2]), args[1:-3]))
            elif args[:3] == ["rabbitmesh", "apply", "-f"]:
                guide.apply.append(args)
            elif "run" in args:
                guide.run.append(args)
            else:
                raise AssertionError(f"{path.name}: a command this test does not know: {command}")
    for block in (content for info, content in blocks if info == ""):
        if EVENT_HEADER in block:
            events = block.split(EVENT_HEADER)[1:]
            guide.printed += [
                [
                    line
                    for line in event.splitlines()
                    if line.strip() and line.strip() != "..." and "knativearrivaltime" not in line
                ]
                for event in events
            ]
    assert guide.helpers and guide.curls and guide.printed, f"{path.name}: nothing to run"
    return guide


def examples_copy(workdir: Path, ports: dict[int, int]) -> Path:
    """config/examples/ (not external/) under `workdir`, the helpers' ports replaced."""
    target = workdir / "config" / "examples"
    target.mkdir(parents=True)
    for f in sorted((REPO / "config" / "examples").glob("*.yaml")):
        text = f.read_text()
        for old, new in ports.items():
            text = text.replace(f"127.0.0.1:{old}/", f"127.0.0.1:{new}/")
        (target / f.name).write_text(text)
    return target


def user_env(port: int, **extra: str) -> dict[str, str]:
    """A user's shell: no RABBITMESH_* but the port rabbitmesh was started with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMESH_")}
    return {**env, "RABBITMESH_HTTP_PORT": str(port), **extra}


async def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    if args[0] == "rabbitmesh":
        args = [sys.executable, "-m", "rabbitmesh", *args[1:]]
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


async def send(curl: list[str], mesh: MeshProcess) -> None:
    """The guide's curl, aimed at this test's rabbitmesh; the guide promises a 202."""
    args = [a.replace("localhost:8080", f"127.0.0.1:{mesh.port}") for a in curl]
    code, out = await run(
        [args[0], "-s", "-o", "/dev/null", "-w", "%{http_code}", *args[1:]], REPO, {}
    )
    assert code == 0 and out == "202", (curl, out)


async def check_printed(guide: Guide, tools: list[tuple[list[str], ToolProcess]]) -> None:
    displays = [tool for args, tool in tools if args[0] == "event-display"]
    assert displays
    for display in displays:
        printed = await display.wait_for_events(len(guide.printed), timeout=30)
        for expected in guide.printed:
            assert any(all(line in event.splitlines() for line in expected) for event in printed), (
                expected,
                printed,
            )


async def start_helpers(
    start_tool, helpers: list[tuple[int, list[str]]]
) -> tuple[list[tuple[list[str], ToolProcess]], dict[int, int]]:
    tools = await asyncio.gather(*(start_tool(*args) for _, args in helpers))
    return (
        [(args, tool) for (_, args), tool in zip(helpers, tools, strict=True)],
        {port: tool.port for (port, _), tool in zip(helpers, tools, strict=True)},
    )


@pytest.mark.parametrize("path", GUIDES, ids=[p.stem for p in GUIDES])
async def test_a_guide_applied_to_a_running_rabbitmesh(path, tmp_path, prefix, start_tool):
    guide = read_guide(path)
    tools, ports = await start_helpers(start_tool, guide.helpers)
    examples_copy(tmp_path, ports)
    empty = tmp_path / "empty"
    empty.mkdir()
    mesh = await MeshProcess(empty, prefix).start()  # as `./dev.sh run`, without config
    try:
        (apply,) = guide.apply
        code, out = await run(apply, tmp_path, user_env(mesh.port))
        assert code == 0 and "created" in out, out
        for curl in guide.curls:
            await send(curl, mesh)
        await check_printed(guide, tools)
    finally:
        await mesh.stop()


async def test_every_guide_with_config_examples_as_the_config_dir(tmp_path, prefix, start_tool):
    """`RABBITMESH_CONFIG_DIR=config/examples rabbitmesh run`, instead of `./dev.sh run`:
    every guide works at once, and so do the sources in the same directory, with nothing
    failing in the log (the external sources are not loaded)."""
    guides = {p.stem: read_guide(p) for p in GUIDES}
    tools: dict[str, list[tuple[list[str], ToolProcess]]] = {}
    ports: dict[int, int] = {}
    for name, guide in guides.items():
        tools[name], started = await start_helpers(start_tool, guide.helpers)
        ports.update(started)
    # The sources examples' own event-displays too, started as their headers say.
    source_helpers = []
    for f in sorted((REPO / "config" / "examples").glob("sources-*.yaml")):
        matches = [m for m in map(HELPER.match, header_lines(f.read_text())) if m]
        source_helpers += [(int(m["port"]), shlex.split(m["args"])) for m in matches]
    sources, started = await start_helpers(start_tool, source_helpers)
    ports.update(started)
    config = examples_copy(tmp_path, ports)
    (command,) = {tuple(c) for g in guides.values() for c in g.run}
    assert list(command) == ["RABBITMESH_CONFIG_DIR=config/examples", "rabbitmesh", "run"]
    mesh = await MeshProcess(config, prefix, **rabbitmesh_on_path(tmp_path)).start()
    try:
        for name, guide in guides.items():
            for curl in guide.curls:
                await send(curl, mesh)
            await check_printed(guide, tools[name])
        # The sources of the same directory deliver too: PingSource, ContainerSource.
        for _, display in sources:
            if display.port in (ports.get(9201), ports.get(9202)):
                await display.wait_for_events(1, timeout=30)
        log = mesh.output()
        assert not [line for line in log.splitlines() if " ERROR " in line], log
        assert "ApiServerSource" not in log and "GitLabSource" not in log, log
    finally:
        await mesh.stop()
