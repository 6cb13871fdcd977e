"""`rabbitmesh eventtype create|delete|describe|list`, as `kn eventtype`."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import EVENTTYPE, ApiClient
from rabbitmesh.cli.common import api_command, api_group, namespace_option
from rabbitmesh.cli.manifests import event_type_attr
from rabbitmesh.cli.sinks import format_destination
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

eventtype = api_group(
    "eventtype",
    "Manage the EventType registry: which events are on offer, and where.\n\n"
    "Sources register the types they emit; with RABBITMESH_EVENTTYPE_AUTO_CREATE the types "
    "seen at broker and channel ingress are registered too.",
)


def _reference(obj: dict[str, Any]) -> str:
    spec = obj.get("spec") or {}
    if spec.get("reference"):
        return format_destination({"ref": spec["reference"]})
    return f"broker:{spec['broker']}" if spec.get("broker") else ""


@eventtype.command(
    "create",
    help="Register an event type (eventing.knative.dev/v1beta3)."
    + examples(
        "rabbitmesh eventtype create hello --type com.example.hello --source /apps/greeter "
        "--broker default",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--type", "-t", "type_", required=True, help="CloudEvents type.")
@click.option("--source", default="", help="CloudEvents source.")
@click.option("--broker", "-b", default=None, help="Broker that offers these events.")
@click.option("--description", default=None, help="What these events are.")
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    type_: str,
    source: str,
    broker: str | None,
    description: str | None,
) -> None:
    spec: dict[str, Any] = {
        "attributes": [
            {"name": "type", "value": type_, "required": True},
            {"name": "source", "value": source, "required": bool(source)},
            {"name": "specversion", "value": "1.0", "required": True},
            {"name": "id", "required": True},
        ]
    }
    if broker:
        spec["reference"] = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "name": broker,
        }
    if description:
        spec["description"] = description
    create_resource(client, EVENTTYPE, name, namespace, spec, shown="Eventtype")


add_verbs(
    eventtype,
    EVENTTYPE,
    columns=[
        ("NAME", out.name),
        ("TYPE", lambda o: event_type_attr(o, "type")),
        ("SOURCE", lambda o: event_type_attr(o, "source")),
        ("REFERENCE", _reference),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List event types: type, source, where they are offered, and readiness."
    + examples("rabbitmesh eventtype list", "rabbitmesh eventtype list -A -o yaml"),
    fields=lambda o: [
        ("Type", event_type_attr(o, "type")),
        ("Source", event_type_attr(o, "source")),
        ("Reference", _reference(o)),
        ("Description", (o.get("spec") or {}).get("description", "")),
    ],
    describe_help="Show an event type." + examples("rabbitmesh eventtype describe hello"),
    delete_help="Delete event types." + examples("rabbitmesh eventtype delete hello"),
)
