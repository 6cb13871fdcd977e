"""tests/support/disruption.py: what a disruptive test changed on the node is undone, even
when the run that changed it died. Checked with harmless rabbitmqctl commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import disruption

pytestmark = pytest.mark.integration

HARMLESS = ["eval", "ok."]


@pytest.fixture
def pending(tmp_path, monkeypatch, rabbitmq):
    path = tmp_path / "disruptions.json"
    monkeypatch.setattr(disruption, "PENDING", path)
    return path


def test_a_disruption_is_recorded_until_undone(pending):
    d = disruption.disrupt(HARMLESS, ["eval", "1."])
    assert json.loads(pending.read_text()) == [{"pid": os.getpid(), "undo": ["eval", "1."]}]
    d.undo()
    d.undo()  # once only
    assert json.loads(pending.read_text()) == []


def test_a_failed_change_is_undone_at_once(pending):
    with pytest.raises(subprocess.CalledProcessError):
        disruption.disrupt(["no_such_command"], HARMLESS)
    assert json.loads(pending.read_text()) == []


def test_what_a_dead_run_left_is_undone_and_a_live_one_is_left_alone(pending):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entries = [
            {"pid": int(dead.stdout), "undo": ["eval", "2."]},
            {"pid": live.pid, "undo": ["eval", "3."]},
            {"pid": int(dead.stdout), "undo": ["no_such_command"]},  # kept: retried later
        ]
        pending.write_text(json.dumps(entries))
        assert disruption.restore_interrupted() == [["eval", "2."]]
        assert json.loads(pending.read_text()) == entries[1:]
    finally:
        live.kill()
        live.wait()
    # Once the live session is gone too, its leftover is undone as well.
    assert disruption.restore_interrupted() == [["eval", "3."]]
    assert json.loads(pending.read_text()) == entries[2:]
