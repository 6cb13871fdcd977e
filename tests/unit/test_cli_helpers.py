"""The CLI's pure parts: SINK parsing and printing, ages, tables; --help on every command."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner

from rabbitmesh.cli import cli
from rabbitmesh.cli.client import CliError
from rabbitmesh.cli.output import age, table
from rabbitmesh.cli.send import target_url
from rabbitmesh.cli.sinks import format_destination, parse_sink


@pytest.mark.parametrize(
    ("sink", "dest", "shown"),
    [
        ("http://127.0.0.1:9/x", {"uri": "http://127.0.0.1:9/x"}, "http://127.0.0.1:9/x"),
        (
            "display",
            {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "display"}},
            "ksvc:display",
        ),
        ("svc:logger", {"ref": {"apiVersion": "v1", "kind": "Service", "name": "logger"}}, None),
        (
            "broker:default:team",
            {
                "ref": {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "name": "default",
                    "namespace": "team",
                }
            },
            "broker:default",
        ),
        (
            "channel:ch",
            {"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "ch"}},
            None,
        ),
    ],
)
def test_sinks(sink, dest, shown):
    assert parse_sink(sink) == dest
    assert format_destination(dest) == (shown or sink)


@pytest.mark.parametrize("bad", ["foo:bar", "broker:", "ftp://x"])
def test_bad_sinks_are_one_clear_error(bad):
    with pytest.raises(CliError) as e:
        parse_sink(bad)
    assert "--sink" in str(e.value)


def test_send_targets():
    assert target_url("broker:b", "http://h:1/", "ns") == "http://h:1/ns/b"
    assert target_url("channel:c:x", "http://h:1", "ns") == "http://h:1/channels/x/c"
    assert target_url("https://e/x", "http://h:1", "ns") == "https://e/x"
    with pytest.raises(CliError):
        target_url("queue:q", "http://h:1", "ns")


def test_age_and_table():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    meta = {"metadata": {"name": "a", "creationTimestamp": "2026-01-02T03:00:00Z"}}
    assert age(meta, now) == "4m"
    assert age({"metadata": {"creationTimestamp": "2025-12-30T03:04:05Z"}}, now) == "3d"
    rows = [{"metadata": {"name": "a", "namespace": "n"}}, {"metadata": {"name": "bbb"}}]
    text = table(rows, [("NAME", lambda o: o["metadata"]["name"])], all_ns=True)
    assert text.splitlines() == ["NAMESPACE   NAME", "n           a", "            bbb"]


def all_commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*path, name))


def test_every_command_has_help_with_examples_or_options():
    runner = CliRunner()
    seen = 0
    for path, cmd in all_commands(cli):
        result = runner.invoke(cli, [*path, "--help"], prog_name="rabbitmesh")
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: rabbitmesh " + " ".join(path) in result.output
        assert len((cmd.help or "").strip()) > 10, path
        if not isinstance(cmd, click.Group) and path[0] not in ("run",):
            assert "Examples:" in result.output or path[0] in (
                "event-display",
                "appender",
                "filter",
                "heartbeats",
            ), path
        seen += 1
    assert seen > 40
