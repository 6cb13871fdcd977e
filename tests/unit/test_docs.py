"""Docs that are generated must match their source."""

from pathlib import Path

from rabbitmesh.settings_doc import render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_reference_is_current():
    assert (DOCS / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `python -m rabbitmesh.settings_doc > "
        "docs/configuration.md`"
    )
