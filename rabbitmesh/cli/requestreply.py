"""`rabbitmesh requestreply create|list|describe|delete` (RequestReply)."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import REQUESTREPLY, ApiClient
from rabbitmesh.cli.common import api_command, api_group, namespace_option
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

requestreply = api_group(
    "requestreply",
    "Manage RequestReplies: POST an event, get the broker's reply to it as the response.",
)


@requestreply.command(
    "create",
    help="Create a RequestReply on a broker."
    + examples(
        "rabbitmesh requestreply create ask --broker default",
        "rabbitmesh requestreply create ask --broker default --timeout PT5S",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--broker", required=True, help="The Broker requests go into.")
@click.option("--correlation-attribute", help="Attribute the id is set in (correlationid).")
@click.option("--reply-attribute", help="Attribute a reply carries the id in (replyid).")
@click.option("--timeout", help="ISO-8601 duration to wait for the reply (PT30S).")
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    broker: str,
    correlation_attribute: str | None,
    reply_attribute: str | None,
    timeout: str | None,
) -> None:
    spec: dict[str, Any] = {
        "brokerRef": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": broker}
    }
    for key, value in (
        ("correlationAttribute", correlation_attribute),
        ("replyAttribute", reply_attribute),
        ("timeout", timeout),
    ):
        if value:
            spec[key] = value
    create_resource(client, REQUESTREPLY, name, namespace, spec)


def _broker(obj: dict[str, Any]) -> str:
    return (out.spec(obj, "brokerRef") or {}).get("name", "")


add_verbs(
    requestreply,
    REQUESTREPLY,
    columns=[
        ("NAME", out.name),
        ("BROKER", _broker),
        ("URL", out.url),
        ("TIMEOUT", lambda o: out.spec(o, "timeout") or ""),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List RequestReplies." + examples("rabbitmesh requestreply list"),
    fields=lambda o: [
        ("Broker", _broker(o)),
        ("URL", out.url(o)),
        ("Correlation attribute", out.spec(o, "correlationAttribute") or ""),
        ("Reply attribute", out.spec(o, "replyAttribute") or ""),
        ("Timeout", out.spec(o, "timeout") or ""),
    ],
    describe_help="Show a RequestReply." + examples("rabbitmesh requestreply describe ask"),
    delete_help="Delete RequestReplies." + examples("rabbitmesh requestreply delete ask"),
)
