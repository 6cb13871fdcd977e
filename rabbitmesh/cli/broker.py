"""`rabbitmesh broker create|update|delete|describe|list`, as `kn broker`."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import BROKER, ApiClient, CliError
from rabbitmesh.cli.common import api_command, api_group, echo_done, namespace_option
from rabbitmesh.cli.sinks import format_destination, parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

CLASS_ANNOTATION = "eventing.knative.dev/broker.class"


def delivery_options(f: Any) -> Any:
    """kn's delivery flags, shared by create and update."""
    for opt in reversed(
        [
            click.option("--dl-sink", help="Dead-letter sink (SINK) for events that fail."),
            click.option("--retry", type=int, help="Retries before an event is dead-lettered."),
            click.option(
                "--backoff-policy",
                type=click.Choice(["exponential", "linear"]),
                help="How the wait between retries grows.",
            ),
            click.option("--backoff-delay", help="Base wait between retries (ISO-8601, PT0.2S)."),
            click.option(
                "--retry-after-max", help="Honour Retry-After up to this long (ISO-8601)."
            ),
            click.option("--timeout", help="Time limit of each delivery attempt (ISO-8601)."),
        ]
    ):
        f = opt(f)
    return f


def delivery_from(flags: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    delivery = dict(current or {})
    if flags.get("dl_sink"):
        delivery["deadLetterSink"] = parse_sink(flags["dl_sink"], "--dl-sink")
    for flag, field in (
        ("retry", "retry"),
        ("backoff_policy", "backoffPolicy"),
        ("backoff_delay", "backoffDelay"),
        ("retry_after_max", "retryAfterMax"),
        ("timeout", "timeout"),
    ):
        if flags.get(flag) is not None:
            delivery[field] = flags[flag]
    return delivery


broker = api_group(
    "broker",
    "Manage brokers: where events are sent, and triggers pick them up.",
)


@broker.command(
    "create",
    help="Create a broker (a RabbitMQ topic exchange; events are POSTed to its URL)."
    + examples(
        "rabbitmesh broker create default",
        "rabbitmesh broker create br1 -n team-a --retry 5 --dl-sink ksvc:dead-letters",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--class", "broker_class", help="Broker class annotation (kept, not used).")
@delivery_options
@api_command
def create(
    client: ApiClient, name: str, namespace: str, broker_class: str | None, **flags: Any
) -> None:
    spec: dict[str, Any] = {}
    delivery = delivery_from(flags)
    if delivery:
        spec["delivery"] = delivery
    annotations = {CLASS_ANNOTATION: broker_class} if broker_class else None
    create_resource(client, BROKER, name, namespace, spec, annotations)


@broker.command(
    "update",
    help="Change a broker's delivery (applies to the next delivery of its triggers)."
    + examples("rabbitmesh broker update br1 --retry 3 --backoff-delay PT1S"),
)
@click.argument("name")
@namespace_option
@delivery_options
@api_command
def update(client: ApiClient, name: str, namespace: str, **flags: Any) -> None:
    obj = client.get(BROKER, namespace, name)
    spec = obj.get("spec") or {}
    delivery = delivery_from(flags, spec.get("delivery"))
    if delivery == (spec.get("delivery") or {}):
        raise CliError("nothing to update: give at least one delivery flag")
    spec["delivery"] = delivery
    obj["spec"] = spec
    obj.pop("status", None)
    client.replace(BROKER, namespace, obj)
    echo_done("Broker", name, "updated", namespace)


def _fields(obj: dict[str, Any]) -> list[tuple[str, str]]:
    delivery = out.spec(obj, "delivery") or {}
    fields = [("Address", out.url(obj))]
    if delivery.get("deadLetterSink"):
        fields.append(("DeadLetterSink", format_destination(delivery["deadLetterSink"])))
    for key in ("retry", "backoffPolicy", "backoffDelay", "timeout", "retryAfterMax"):
        if key in delivery:
            fields.append((key[0].upper() + key[1:], str(delivery[key])))
    return fields


add_verbs(
    broker,
    BROKER,
    columns=[
        ("NAME", out.name),
        ("URL", out.url),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List brokers: name, URL to POST events to, age and readiness."
    + examples("rabbitmesh broker list", "rabbitmesh broker list -A -o yaml"),
    fields=_fields,
    describe_help="Show a broker: its URL, delivery and conditions."
    + examples("rabbitmesh broker describe default"),
    delete_help="Delete brokers (and their RabbitMQ exchanges); their triggers stay, not Ready."
    + examples("rabbitmesh broker delete br1"),
)
