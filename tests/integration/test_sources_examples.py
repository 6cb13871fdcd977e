"""The sources examples (config/examples/[external/]sources-*.yaml) as a user runs them:
`rabbitmesh run` and the event-displays are real processes started with the commands in each
file's header, `rabbitmesh` is found on PATH, and what the event-displays print is checked."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path

import pytest

from rabbitmesh.resources.loader import load_path
from tests.integration.test_examples import HELPER, header_lines
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
RUNNABLE = ("sources-ping.yaml", "sources-container.yaml", "sources-sinkbinding.yaml")


def rabbitmesh_on_path(tmp_path: Path) -> dict[str, str]:
    """A `rabbitmesh` command on PATH for this Python, as `pip install` would give a user."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "rabbitmesh"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m rabbitmesh "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_every_sources_example_loads():
    files = sorted(EXAMPLES.glob("sources-*.yaml"))
    external = sorted((EXAMPLES / "external").glob("sources-*.yaml"))
    kinds = {r.KIND for f in files for r in load_path(f)}
    assert kinds == {"PingSource", "ContainerSource", "SinkBinding"}
    # Those that need a Kubernetes API server or a GitLab are kept out of
    # `RABBITMESH_CONFIG_DIR=config/examples`, where they would fail every few seconds.
    assert {r.KIND for f in external for r in load_path(f)} == {
        "ApiServerSource",
        "GitLabSource",
        "Secret",
    }
    assert {r.KIND for r in load_path(EXAMPLES)}.isdisjoint({"ApiServerSource", "GitLabSource"})


async def test_ping_container_and_sinkbinding_examples(tmp_path, prefix, start_tool):
    env = rabbitmesh_on_path(tmp_path)
    texts = {name: (EXAMPLES / name).read_text() for name in RUNNABLE}
    displays = {}
    for name, text in texts.items():
        (m,) = [m for m in map(HELPER.match, header_lines(text)) if m]
        displays[name] = await start_tool(*shlex.split(m["args"]))
        texts[name] = text.replace(f"127.0.0.1:{m['port']}/", f"127.0.0.1:{displays[name].port}/")
    config = tmp_path / "config"
    for name, text in texts.items():
        write_manifests(config, text, name)
    mesh = await MeshProcess(config, prefix, **env).start()
    try:
        (ping,) = await displays["sources-ping.yaml"].wait_for_events(1, timeout=15)
        assert "type: dev.knative.sources.ping" in ping
        assert "source: /apis/v1/namespaces/default/pingsources/test-ping-source" in ping
        assert '"message": "Hello world!"' in ping

        beat, *_ = await displays["sources-container.yaml"].wait_for_events(1, timeout=20)
        assert "type: dev.knative.eventing.samples.heartbeat" in beat
        assert "heartbeats/#default/test-heartbeats" in beat

        # The header's `sinkbinding exec` line, run as written.
        line = next(h for h in header_lines(texts["sources-sinkbinding.yaml"]) if " exec " in h)
        args = shlex.split(line.lstrip("#").strip())
        assert args[0] == "rabbitmesh"
        proc = await asyncio.create_subprocess_exec(
            *args,
            env={**os.environ, **env, "RABBITMESH_SERVER": mesh.url},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            bound, *_ = await displays["sources-sinkbinding.yaml"].wait_for_events(1, timeout=20)
        finally:
            proc.terminate()
            await proc.wait()
        assert "type: dev.knative.eventing.samples.heartbeat" in bound
        assert "heartbeats/#default/bind-heartbeat" in bound
        assert "sink: bound" in bound  # ceOverrides through K_CE_OVERRIDES
        await eventually(lambda: mesh.proc is not None and mesh.proc.poll() is None, what="alive")
    finally:
        await mesh.stop()
