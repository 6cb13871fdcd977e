"""`rabbitmesh subscription create|update|delete|describe|list`, as `kn subscription`."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import SUBSCRIPTION, ApiClient, CliError
from rabbitmesh.cli.common import api_command, api_group, echo_done, namespace_option
from rabbitmesh.cli.sinks import parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples


def channel_ref(text: str) -> dict[str, Any]:
    """--channel NAME, channel:NAME or imcv1:NAME."""
    prefix, _, name = text.partition(":")
    if not name:
        prefix, name = "channel", text
    kinds = {"channel": "Channel", "imc": "InMemoryChannel", "imcv1": "InMemoryChannel"}
    if prefix not in kinds:
        raise CliError(f"--channel {text!r}: use NAME, channel:NAME or imcv1:NAME")
    return {"apiVersion": "messaging.knative.dev/v1", "kind": kinds[prefix], "name": name}


subscription = api_group(
    "subscription",
    "Manage subscriptions: a channel's events to a subscriber.",
)


def _sink_options(f: Any) -> Any:
    f = click.option("--sink-dead-letter", "-D", default=None, help="Dead-letter sink (SINK).")(f)
    f = click.option("--sink-reply", "-R", default=None, help="Where replies go (SINK).")(f)
    return f


@subscription.command(
    "create",
    help="Create a subscription: every event of CHANNEL goes to SINK; its replies go to "
    "--sink-reply, and events that fail to --sink-dead-letter."
    + examples(
        "rabbitmesh subscription create sub1 --channel ch1 --sink ksvc:display",
        "rabbitmesh subscription create sub2 --channel ch1 --sink http://127.0.0.1:9001/ "
        "--sink-reply broker:default --sink-dead-letter svc:dlq",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--channel", "-C", required=True, help="Channel: NAME, channel:NAME or imcv1:NAME.")
@click.option("--sink", "-s", required=True, help="Subscriber (SINK).")
@_sink_options
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    channel: str,
    sink: str,
    sink_reply: str | None,
    sink_dead_letter: str | None,
) -> None:
    spec: dict[str, Any] = {"channel": channel_ref(channel), "subscriber": parse_sink(sink)}
    if sink_reply:
        spec["reply"] = parse_sink(sink_reply, "--sink-reply")
    if sink_dead_letter:
        spec["delivery"] = {"deadLetterSink": parse_sink(sink_dead_letter, "--sink-dead-letter")}
    create_resource(client, SUBSCRIPTION, name, namespace, spec)


@subscription.command(
    "update",
    help="Change a subscription's sink, reply or dead-letter sink (from the next delivery)."
    + examples("rabbitmesh subscription update sub1 --sink ksvc:other"),
)
@click.argument("name")
@namespace_option
@click.option("--sink", "-s", default=None, help="Subscriber (SINK).")
@_sink_options
@api_command
def update(
    client: ApiClient,
    name: str,
    namespace: str,
    sink: str | None,
    sink_reply: str | None,
    sink_dead_letter: str | None,
) -> None:
    if sink is None and sink_reply is None and sink_dead_letter is None:
        raise CliError("nothing to update: give --sink, --sink-reply or --sink-dead-letter")
    obj = client.get(SUBSCRIPTION, namespace, name)
    spec = obj.get("spec") or {}
    if sink:
        spec["subscriber"] = parse_sink(sink)
    if sink_reply:
        spec["reply"] = parse_sink(sink_reply, "--sink-reply")
    if sink_dead_letter:
        delivery = spec.get("delivery") or {}
        delivery["deadLetterSink"] = parse_sink(sink_dead_letter, "--sink-dead-letter")
        spec["delivery"] = delivery
    obj["spec"] = spec
    obj.pop("status", None)
    client.replace(SUBSCRIPTION, namespace, obj)
    echo_done("Subscription", name, "updated", namespace)


def _dls(obj: dict[str, Any]) -> str:
    return out.sink_of(obj, "delivery", "deadLetterSink")


add_verbs(
    subscription,
    SUBSCRIPTION,
    columns=[
        ("NAME", out.name),
        ("CHANNEL", lambda o: out.spec(o, "channel", "name") or ""),
        ("SUBSCRIBER", lambda o: out.sink_of(o, "subscriber")),
        ("REPLY", lambda o: out.sink_of(o, "reply")),
        ("DEAD LETTER SINK", _dls),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List subscriptions: channel, subscriber, reply, dead-letter sink and readiness."
    + examples("rabbitmesh subscription list"),
    fields=lambda o: [
        ("Channel", out.spec(o, "channel", "name") or ""),
        ("Subscriber", out.sink_of(o, "subscriber")),
        ("Reply", out.sink_of(o, "reply")),
        ("DeadLetterSink", _dls(o)),
    ],
    describe_help="Show a subscription and its conditions."
    + examples("rabbitmesh subscription describe sub1"),
    delete_help="Delete subscriptions." + examples("rabbitmesh subscription delete sub1"),
)
