"""`rabbitmesh rabbitmqsink create|delete|describe|list`: events out to a RabbitMQ exchange."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import RABBITMQSINK, ApiClient
from rabbitmesh.cli.common import (
    api_command,
    api_group,
    namespace_option,
    rabbitmq_connection_options,
)
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

rabbitmqsink = api_group(
    "rabbitmqsink",
    "Manage RabbitmqSinks: addressables that publish each event they receive to an "
    "existing RabbitMQ exchange (confirmed before 202).",
)


@rabbitmqsink.command(
    "create",
    help="Create a RabbitmqSink. Use it as a sink with rabbitmqsink:NAME."
    + examples(
        "rabbitmesh rabbitmqsink create out --exchange orders --routing-key 'orders.{subject}'",
        "rabbitmesh trigger create t --broker default --sink rabbitmqsink:out",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--exchange", required=True, help="The exchange (it must exist).")
@click.option(
    "--routing-key",
    default="{type}",
    show_default=True,
    help="Routing key template: text with {attribute} placeholders.",
)
@click.option(
    "--content-mode",
    type=click.Choice(["binary", "structured"]),
    default="binary",
    show_default=True,
    help="binary: the AMQP binding (ce- headers); structured: JSON.",
)
@rabbitmq_connection_options
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    exchange: str,
    routing_key: str,
    content_mode: str,
    vhost: str | None,
    connection_secret: str | None,
) -> None:
    spec: dict[str, Any] = {
        "exchangeName": exchange,
        "routingKey": routing_key,
        "contentMode": content_mode,
    }
    if vhost:
        spec["vhost"] = vhost
    if connection_secret:
        spec["connectionSecret"] = {"name": connection_secret}
    create_resource(client, RABBITMQSINK, name, namespace, spec)


add_verbs(
    rabbitmqsink,
    RABBITMQSINK,
    columns=[
        ("NAME", out.name),
        ("EXCHANGE", lambda o: out.spec(o, "exchangeName") or ""),
        ("URL", out.url),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List RabbitmqSinks." + examples("rabbitmesh rabbitmqsink list"),
    fields=lambda o: [
        ("Exchange", out.spec(o, "exchangeName") or ""),
        ("Routing key", out.spec(o, "routingKey") or "{type}"),
        ("Content mode", out.spec(o, "contentMode") or "binary"),
        ("URL", out.url(o)),
    ],
    describe_help="Show a RabbitmqSink." + examples("rabbitmesh rabbitmqsink describe out"),
    delete_help="Delete a RabbitmqSink." + examples("rabbitmesh rabbitmqsink delete out"),
)
