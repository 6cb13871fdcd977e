"""Changing an in-process mesh's manifests and reconciling them at once (the config-dir
watcher would pick the change up within a second; tests should not wait for a poll)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.support.mesh import InProcessMesh


async def reapply(mesh: InProcessMesh, text: str, name: str = "manifests.yaml") -> None:
    path = Path(mesh.settings.config_dir) / name
    path.write_text(textwrap.dedent(text))
    plane = mesh.server.plane
    assert plane is not None
    files = {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}
    await plane.config.sync(plane.config.parse(files))
    await plane.reconcile()
