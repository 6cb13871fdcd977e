"""The compose path on a real Docker engine (tests/compose/compose_proof.py), under pytest.

Marked `compose` and left out of the default run (pyproject.toml's addopts), like `slow`: it
builds images and starts eight containers, minutes of work on a shared machine. Run it with

    ./dev.sh test tests/compose -m compose

It needs a running Docker engine and skips, saying so, where there is none; the proof script
itself installs the Compose client and builds stand-in base images when they are missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compose_proof.py")

pytestmark = pytest.mark.compose


def docker_engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no `docker` client on PATH (apt-get install docker.io, then start dockerd)"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"no Docker engine answers `docker info`: {probe.stderr.strip()[:300]}"
    return None


@pytest.mark.timeout(3600)
def test_compose_stacks_start_deliver_and_survive_kills():
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"compose proof needs a Docker engine: {problem}")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=3300
    )
    print(proc.stdout)  # the RESULT lines, shown with -s or on failure
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "RESULT ha: accepted (202) / delivered / lost" in proc.stdout
