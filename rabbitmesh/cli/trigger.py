"""`rabbitmesh trigger create|update|delete|describe|list`, as `kn trigger`."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import BROKER, TRIGGER, ApiClient, CliError
from rabbitmesh.cli.common import (
    api_command,
    api_group,
    echo_done,
    key_values,
    metadata,
    namespace_option,
)
from rabbitmesh.cli.sinks import parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

trigger = api_group(
    "trigger",
    "Manage triggers: which events of a broker go to which subscriber.",
)


@trigger.command(
    "create",
    help="Create a trigger: events of BROKER whose attributes match every --filter go to SINK."
    "\n\nSINK is ksvc:NAME, svc:NAME, broker:NAME, channel:NAME, a bare NAME (= ksvc:NAME) "
    "or an http(s):// URL."
    + examples(
        "rabbitmesh trigger create hi --broker br1 --filter type=com.hj.hi --sink http://127.0.0.1:9001/",
        "rabbitmesh trigger create all --sink ksvc:display            # every event of 'default'",
        "rabbitmesh trigger create mine --inject-broker --filter source=me --sink svc:logger",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--broker", default="default", show_default=True, help="Broker to take events from.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help='Only events whose attribute KEY equals VALUE ("" = any value). Repeatable.',
)
@click.option("--sink", "-s", required=True, help="Where matching events go (SINK).")
@click.option("--inject-broker", is_flag=True, help="Create the broker 'default' if it is missing.")
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    broker: str,
    filters: tuple[str, ...],
    sink: str,
    inject_broker: bool,
) -> None:
    spec: dict[str, Any] = {"broker": broker, "subscriber": parse_sink(sink)}
    attrs = key_values(filters, "--filter")
    if attrs:
        spec["filter"] = {"attributes": attrs}
    if inject_broker:
        if broker != "default":
            raise CliError("--inject-broker makes the broker 'default'; drop --broker")
        try:
            client.get(BROKER, namespace, "default")
        except CliError as e:
            if e.status != 404:
                raise
            client.create(
                BROKER,
                namespace,
                {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "metadata": metadata("default", namespace),
                },
            )
    create_resource(client, TRIGGER, name, namespace, spec)


@trigger.command(
    "update",
    help="Change a trigger's filter or sink. A filter change rebinds its queue without losing "
    "queued events; a sink change applies from the next delivery."
    + examples(
        "rabbitmesh trigger update hi --filter type=com.hj.hello",
        "rabbitmesh trigger update hi --filter source-          # remove the source filter",
        "rabbitmesh trigger update hi --sink http://127.0.0.1:9002/",
    ),
)
@click.argument("name")
@namespace_option
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE|KEY-",
    help="Set a filter attribute, or remove one with KEY-. Repeatable.",
)
@click.option("--sink", "-s", default=None, help="New subscriber (SINK).")
@api_command
def update(
    client: ApiClient, name: str, namespace: str, filters: tuple[str, ...], sink: str | None
) -> None:
    if not filters and sink is None:
        raise CliError("nothing to update: give --filter or --sink")
    obj = client.get(TRIGGER, namespace, name)
    spec = obj.get("spec") or {}
    attrs = dict((spec.get("filter") or {}).get("attributes") or {})
    for f in filters:
        if f.endswith("-") and "=" not in f:
            attrs.pop(f[:-1], None)
        else:
            attrs.update(key_values([f], "--filter"))
    if attrs:
        spec["filter"] = {"attributes": attrs}
    else:
        spec.pop("filter", None)
    if sink is not None:
        spec["subscriber"] = parse_sink(sink)
    obj["spec"] = spec
    obj.pop("status", None)
    client.replace(TRIGGER, namespace, obj)
    echo_done("Trigger", name, "updated", namespace)


def _filter(obj: dict[str, Any]) -> str:
    attrs = out.spec(obj, "filter", "attributes") or {}
    if attrs:
        return ", ".join(f"{k}={v}" for k, v in attrs.items())
    return "(filters) " + str(out.spec(obj, "filters")) if out.spec(obj, "filters") else ""


def _fields(obj: dict[str, Any]) -> list[tuple[str, str]]:
    status = obj.get("status") or {}
    return [
        ("Broker", out.spec(obj, "broker") or ""),
        ("Filter", _filter(obj)),
        ("Sink", out.sink_of(obj, "subscriber")),
        ("SinkURI", status.get("subscriberUri", "")),
        ("DeadLetterSink", status.get("deadLetterSinkUri", "")),
    ]


add_verbs(
    trigger,
    TRIGGER,
    columns=[
        ("NAME", out.name),
        ("BROKER", lambda o: out.spec(o, "broker") or ""),
        ("SINK", lambda o: out.sink_of(o, "subscriber")),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List triggers: name, broker, sink, age and readiness."
    + examples("rabbitmesh trigger list", "rabbitmesh trigger list -n team-a -o json"),
    fields=_fields,
    describe_help="Show a trigger: broker, filter, sink and conditions."
    + examples("rabbitmesh trigger describe hi"),
    delete_help="Delete triggers, with their RabbitMQ queues."
    + examples("rabbitmesh trigger delete hi"),
)
