"""`rabbitmesh channel create|delete|describe|list`, as `kn channel`."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import CHANNEL, ApiClient
from rabbitmesh.cli.common import api_command, api_group, namespace_option
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

#: kn's --type aliases -> the channel kind of the template.
TYPES = {"imcv1": "InMemoryChannel", "imc": "InMemoryChannel", "inmemorychannel": "InMemoryChannel"}


channel = api_group(
    "channel",
    "Manage channels: every subscription gets every event.",
)


@channel.command(
    "create",
    help="Create a channel (a RabbitMQ fanout exchange; events are POSTed to its URL)."
    + examples("rabbitmesh channel create ch1", "rabbitmesh channel create ch1 --type imcv1"),
)
@click.argument("name")
@namespace_option
@click.option(
    "--type",
    "channel_type",
    default=None,
    help="Channel type: imcv1 (InMemoryChannel), or a kind. Every type is the same here.",
)
@api_command
def create(client: ApiClient, name: str, namespace: str, channel_type: str | None) -> None:
    spec: dict[str, Any] = {}
    if channel_type:
        kind = TYPES.get(channel_type.lower(), channel_type)
        spec["channelTemplate"] = {"apiVersion": "messaging.knative.dev/v1", "kind": kind}
    create_resource(client, CHANNEL, name, namespace, spec)


def _type(obj: dict[str, Any]) -> str:
    return (out.spec(obj, "channelTemplate") or {}).get("kind") or "InMemoryChannel"


add_verbs(
    channel,
    CHANNEL,
    columns=[
        ("NAME", out.name),
        ("TYPE", _type),
        ("URL", out.url),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List channels: name, type, URL, age and readiness."
    + examples("rabbitmesh channel list"),
    fields=lambda o: [("Type", _type(o)), ("URL", out.url(o))],
    describe_help="Show a channel: type, URL and conditions."
    + examples("rabbitmesh channel describe ch1"),
    delete_help="Delete channels." + examples("rabbitmesh channel delete ch1"),
)
