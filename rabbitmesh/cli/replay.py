"""`rabbitmesh replay create|list|describe|delete` (docs/replay.md)."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import ApiClient, CliError, Kind
from rabbitmesh.cli.common import api_command, api_group, namespace_option
from rabbitmesh.cli.sinks import parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

REPLAY = Kind("rabbitmesh.dev", "v1alpha1", "Replay", "replays")


replay = api_group(
    "replay",
    "Send a broker's archived events again, to a trigger or a sink.\n\n"
    "The broker needs the annotation rabbitmesh.dev/archive-retention. Each replayed event is "
    "the archived one plus the extension rabbitmeshreplay=<replay name>; a Replay sends each "
    "event of its window that passes its filters exactly once, paced by "
    "RABBITMESH_REPLAY_RATE.",
)


@replay.command(
    "create",
    help="Replay the events BROKER accepted between --from and --to (RFC 3339; --to defaults "
    "to now) that match --filter (a CESQL expression), into --trigger or --sink."
    + examples(
        "rabbitmesh replay create again --broker default --from 2026-12-01T00:00:00Z "
        "--trigger orders",
        "rabbitmesh replay create audit --broker default --from 2026-12-01T00:00:00Z "
        "--filter \"type = 'order.created'\" --sink http://127.0.0.1:9001/",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--broker", required=True, help="Broker whose archive to read.")
@click.option("--from", "from_", required=True, help="Start of the window (RFC 3339).")
@click.option("--to", default=None, help="End of the window (RFC 3339; default: creation).")
@click.option("--filter", "filter_", default=None, help="CESQL expression events must match.")
@click.option("--trigger", default=None, help="A Trigger of the broker to replay into.")
@click.option("--sink", "-s", default=None, help="A sink to replay to (SINK, as for triggers).")
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    broker: str,
    from_: str,
    to: str | None,
    filter_: str | None,
    trigger: str | None,
    sink: str | None,
) -> None:
    if (trigger is None) == (sink is None):
        raise CliError("give exactly one of --trigger and --sink")
    destination: dict[str, Any] = {"trigger": trigger} if trigger else parse_sink(sink or "")
    spec: dict[str, Any] = {"broker": broker, "from": from_, "destination": destination}
    if to is not None:
        spec["to"] = to
    if filter_ is not None:
        spec["filter"] = filter_
    create_resource(client, REPLAY, name, namespace, spec)


def _destination(obj: dict[str, Any]) -> str:
    dest = out.spec(obj, "destination") or {}
    if dest.get("trigger"):
        return f"trigger:{dest['trigger']}"
    return out.sink_of(obj, "destination")


def _progress(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    done, total = status.get("replayedCount"), status.get("totalCount")
    if done is None:
        return ""
    return f"{done}/{total if total is not None else '?'}"


def _succeeded(obj: dict[str, Any]) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Succeeded":
            return str(c.get("status", ""))
    return ""


def _fields(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Broker", out.spec(obj, "broker") or ""),
        ("From", out.spec(obj, "from") or ""),
        ("To", out.spec(obj, "to") or "(creation)"),
        ("Filter", out.spec(obj, "filter") or ""),
        ("Destination", _destination(obj)),
        ("Replayed", _progress(obj)),
    ]


add_verbs(
    replay,
    REPLAY,
    columns=[
        ("NAME", out.name),
        ("BROKER", lambda o: out.spec(o, "broker") or ""),
        ("DESTINATION", _destination),
        ("REPLAYED", _progress),
        ("SUCCEEDED", _succeeded),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List replays: broker, destination, progress and state."
    + examples("rabbitmesh replay list"),
    fields=_fields,
    describe_help="Show a replay: its window, filter, destination, progress and conditions."
    + examples("rabbitmesh replay describe again"),
    delete_help="Delete replays; a running one stops." + examples("rabbitmesh replay delete again"),
)
