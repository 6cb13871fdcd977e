"""The official CESQL 1.0 TCK: one pytest case per test of every *.yaml in the TCK directory.

The directory is ../shared/cesql_tck next to the repository, or $RABBITMESH_CESQL_TCK_DIR.
New TCK files are picked up without code changes. The TCK is data that lives beside the
repository (the CloudEvents project's CESQL conformance cases), not in it: a clone on its own
skips this test with a message saying where the TCK comes from, while CI (the `CI` variable
set) fails when it is missing, so the conformance check can never silently disappear there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from rabbitmesh.cesql import CesqlParseError, compile_expression, evaluate

DEFAULT_TCK_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "cesql_tck"

#: A valid event with only the required attributes: optional ones must stay absent because
#: several TCK tests expect missingAttribute for them.
DEFAULT_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "tck-event-1",
    "source": "/tck/source",
    "type": "io.cloudevents.tck",
}

#: Event members that are not context attributes.
NON_ATTRIBUTES = frozenset({"data", "data_base64"})


class _TckLoader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver: TCK events are JSON, where times are strings."""


_TckLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


#: Fields that are text even when they look like YAML booleans or numbers (`expression: TRUE`).
TEXT_FIELDS = ("name", "expression")


def _load(path: Path) -> list[dict[str, Any]]:
    """The tests of one TCK file, with TEXT_FIELDS kept as their raw scalar text."""
    text = path.read_text(encoding="utf-8")
    document = yaml.load(text, Loader=_TckLoader) or {}
    tests: list[dict[str, Any]] = document.get("tests") or []
    root = yaml.compose(text, Loader=_TckLoader)
    test_nodes = next((v for k, v in root.value if k.value == "tests"), None) if root else None
    for test, node in zip(tests, test_nodes.value if test_nodes else [], strict=True):
        for key, value in node.value:
            if key.value in TEXT_FIELDS and isinstance(value, yaml.ScalarNode):
                test[key.value] = value.value
    return tests


def tck_dir() -> Path:
    override = os.environ.get("RABBITMESH_CESQL_TCK_DIR")
    return Path(override) if override else DEFAULT_TCK_DIR


def _cases() -> list[Any]:
    directory = tck_dir()
    files = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    if not files:
        problem = (
            f"CESQL TCK not found: no *.yaml in {directory}. It is the CESQL 1.0 conformance "
            "suite (the YAML files under cesql/tck in github.com/cloudevents/spec); put them "
            "in ../shared/cesql_tck next to the repository or set RABBITMESH_CESQL_TCK_DIR"
        )
        marks = () if os.environ.get("CI") else (pytest.mark.skip(reason=problem),)
        return [pytest.param({"problem": problem}, id="cesql-tck-missing", marks=marks)]
    params: list[Any] = []
    seen: set[str] = set()
    for path in files:
        for test in _load(path):
            case_id = f"{path.stem}::{test['name']}"
            while case_id in seen:
                case_id += "'"
            seen.add(case_id)
            params.append(pytest.param(test, id=case_id))
    return params


def _attributes(test: dict[str, Any]) -> dict[str, Any]:
    event = test.get("event")
    attributes = dict(DEFAULT_EVENT if event is None else event)
    attributes.update(test.get("eventOverrides") or {})
    return {k: v for k, v in attributes.items() if k not in NON_ATTRIBUTES}


@pytest.mark.parametrize("test", _cases())
def test_tck(test: dict[str, Any]) -> None:
    if "problem" in test:
        pytest.fail(test["problem"])
    expression = test["expression"]
    value, errors = evaluate(expression, _attributes(test))

    expected_error = test.get("error")
    kinds = {error.kind for error in errors}
    if expected_error is None:
        assert errors == [], f"{expression!r}: unexpected errors {errors}"
    else:
        assert kinds == {expected_error}, f"{expression!r}: expected {expected_error}, got {errors}"
    if expected_error == "parse":
        with pytest.raises(CesqlParseError):
            compile_expression(expression)

    if "result" in test:
        expected = test["result"]
        assert type(value) is type(expected) and value == expected, (
            f"{expression!r}: expected {expected!r} ({type(expected).__name__}), "
            f"got {value!r} ({type(value).__name__}), errors {errors}"
        )
