"""Renders docs/configuration.md from the Settings model, so the reference never drifts.

python -m rabbitmesh.settings_doc > docs/configuration.md
"""

from __future__ import annotations

from rabbitmesh.settings import Settings

HEADER = """# Configuration reference

Generated from `rabbitmesh/settings.py` by
`python -m rabbitmesh.settings_doc > docs/configuration.md`; a test fails when this page
and the model disagree.

Every setting is an environment variable, and the `rabbitmesh run` flag of the same name
overrides it (`RABBITMESH_HTTP_PORT=9000` or `rabbitmesh run --http-port 9000`). An invalid
value stops start-up with one line naming the variable.

| variable | flag | default | meaning |
|---|---|---|---|
"""


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default}`"
        desc = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `RABBITMESH_{name.upper()}` | `--{name.replace('_', '-')}` | {default} | {desc} |"
        )
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
