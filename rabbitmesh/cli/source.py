"""`rabbitmesh source list` and `source ping|container|apiserver|gitlab ...`, as `kn source`."""

from __future__ import annotations

import base64
import json
from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import (
    APISERVERSOURCE,
    CONTAINERSOURCE,
    GITLABSOURCE,
    PINGSOURCE,
    RABBITMQSOURCE,
    SOURCE_KINDS,
    ApiClient,
    CliError,
    Kind,
)
from rabbitmesh.cli.common import (
    all_namespaces_option,
    api_command,
    api_group,
    echo_done,
    key_values,
    namespace_option,
    rabbitmq_connection_options,
)
from rabbitmesh.cli.sinks import parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples
from rabbitmesh.resources.sources import RUNTIME_ANNOTATION, RUNTIMES

SINK_HELP = (
    "Where events go: ksvc:NAME, svc:NAME, broker:NAME, channel:NAME, NAME or an http(s) URL."
)


source = api_group(
    "source",
    "Manage event sources.",
)


@source.command(
    "list",
    help="List the sources of every kind: name, type, resource, sink and readiness."
    + examples("rabbitmesh source list", "rabbitmesh source list -A"),
)
@namespace_option
@all_namespaces_option
@out.output_option
@api_command
def list_sources(
    client: ApiClient, namespace: str, all_namespaces: bool, output: str | None
) -> None:
    ns = None if all_namespaces else namespace
    known = {k.plural for k in client.kinds()}
    items: list[dict[str, Any]] = []
    for kind in SOURCE_KINDS:
        if kind.plural in known:
            items.extend(client.list(kind, ns))
    items.sort(key=lambda o: (out.namespace(o), o.get("kind", ""), out.name(o)))
    out.print_list(
        items,
        [
            ("NAME", out.name),
            ("TYPE", lambda o: o.get("kind", "")),
            ("RESOURCE", lambda o: f"{o.get('kind', '').lower()}s.sources.knative.dev"),
            ("SINK", lambda o: out.sink_of(o, "sink")),
            ("READY", out.ready),
            ("REASON", out.reason),
        ],
        what="sources",
        output=output,
        all_ns=all_namespaces,
        namespace_name=ns,
    )


def _create(
    client: ApiClient,
    kind: Kind,
    name: str,
    namespace: str,
    spec: dict[str, Any],
    sink: str,
    annotations: dict[str, str] | None = None,
) -> None:
    create_resource(client, kind, name, namespace, {**spec, "sink": parse_sink(sink)}, annotations)


def _overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    ext = key_values(pairs, "--ce-override")
    return {"ceOverrides": {"extensions": ext}} if ext else {}


def _group(name: str, kind: Kind, what: str, columns: list[out.Column]) -> click.Group:
    group = api_group(name, f"Manage {what}.")
    add_verbs(
        group,
        kind,
        columns=columns,
        list_help=f"List {what}." + examples(f"rabbitmesh source {name} list"),
        fields=lambda o: (
            [("Sink", out.sink_of(o, "sink"))]
            + [
                (k[0].upper() + k[1:], v if isinstance(v, str) else json.dumps(v))
                for k, v in (o.get("spec") or {}).items()
                if k != "sink"
            ]
        ),
        describe_help=f"Show one of the {what}."
        + examples(f"rabbitmesh source {name} describe NAME"),
        delete_help=f"Delete {what}." + examples(f"rabbitmesh source {name} delete NAME"),
    )
    source.add_command(group)
    return group


sink_option = click.option("--sink", "-s", required=True, help=SINK_HELP)
ce_override_option = click.option(
    "--ce-override",
    "ce_overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="CloudEvents extension set on every event. Repeatable.",
)

# --- ping -----------------------------------------------------------------------------------

ping = _group(
    "ping",
    PINGSOURCE,
    "PingSources (an event on a cron schedule)",
    [
        ("NAME", out.name),
        ("SCHEDULE", lambda o: out.spec(o, "schedule") or ""),
        ("SINK", lambda o: out.sink_of(o, "sink")),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
)


def _ping_spec(schedule: str | None, data: str | None, encoding: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if schedule is not None:
        spec["schedule"] = schedule
    if data is not None:
        if encoding == "base64":
            try:
                base64.b64decode(data, validate=True)
            except ValueError:
                raise CliError("--data is not base64 (drop --encoding base64 for text)") from None
            spec["dataBase64"] = data
        else:
            spec["data"] = data
    return spec


@ping.command(
    "create",
    help="Create a PingSource: an event of type dev.knative.sources.ping on every tick."
    + examples(
        "rabbitmesh source ping create tick --schedule '*/1 * * * *' --data '{\"hi\":1}' "
        "--sink broker:default",
    ),
)
@click.argument("name")
@namespace_option
@click.option(
    "--schedule",
    default=None,
    help="Cron schedule: 5 fields, or 6 with a leading seconds field "
    "('*/3 * * * * *': every 3 seconds) [default: every minute].",
)
@click.option("--timezone", default=None, help="IANA time zone of the schedule (Europe/Paris).")
@click.option("--data", "-d", default=None, help="Event data.")
@click.option(
    "--encoding",
    type=click.Choice(["text", "base64"]),
    default="text",
    show_default=True,
    help="How --data is given.",
)
@click.option("--content-type", default=None, help="datacontenttype of the data.")
@sink_option
@ce_override_option
@api_command
def ping_create(
    client: ApiClient,
    name: str,
    namespace: str,
    schedule: str | None,
    timezone: str | None,
    data: str | None,
    encoding: str,
    content_type: str | None,
    sink: str,
    ce_overrides: tuple[str, ...],
) -> None:
    spec = {**_ping_spec(schedule, data, encoding), **_overrides(ce_overrides)}
    if timezone:
        spec["timezone"] = timezone
    if content_type:
        spec["contentType"] = content_type
    _create(client, PINGSOURCE, name, namespace, spec, sink)


@ping.command(
    "update",
    help="Change a PingSource's schedule, data or sink."
    + examples("rabbitmesh source ping update tick --schedule '*/5 * * * *'"),
)
@click.argument("name")
@namespace_option
@click.option("--schedule", default=None, help="Cron schedule.")
@click.option("--data", "-d", default=None, help="Event data.")
@click.option("--encoding", type=click.Choice(["text", "base64"]), default="text")
@click.option("--sink", "-s", default=None, help=SINK_HELP)
@api_command
def ping_update(
    client: ApiClient,
    name: str,
    namespace: str,
    schedule: str | None,
    data: str | None,
    encoding: str,
    sink: str | None,
) -> None:
    if schedule is None and data is None and sink is None:
        raise CliError("nothing to update: give --schedule, --data or --sink")
    obj = client.get(PINGSOURCE, namespace, name)
    spec = obj.get("spec") or {}
    if data is not None:
        spec.pop("data", None)
        spec.pop("dataBase64", None)
    spec.update(_ping_spec(schedule, data, encoding))
    if sink is not None:
        spec["sink"] = parse_sink(sink)
    obj["spec"] = spec
    obj.pop("status", None)
    client.replace(PINGSOURCE, namespace, obj)
    echo_done("PingSource", name, "updated", namespace)


# --- container ------------------------------------------------------------------------------

container = _group(
    "container",
    CONTAINERSOURCE,
    "ContainerSources (a process that posts events to $K_SINK)",
    [
        ("NAME", out.name),
        ("SINK", lambda o: out.sink_of(o, "sink")),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
)


@container.command(
    "create",
    help="Create a ContainerSource: runs a container (or, with --cmd, a process) that posts "
    "events to $K_SINK."
    + examples(
        "rabbitmesh source container create beats --cmd rabbitmesh --arg heartbeats "
        "--arg --period=1s --sink broker:default",
        "rabbitmesh source container create beats --image ghcr.io/me/beats:1 --runtime docker "
        "--sink ksvc:display",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--image", default=None, help="Container image (docker runtime).")
@click.option("--cmd", default=None, help="Command to run (process runtime).")
@click.option("--arg", "args", multiple=True, help="Argument. Repeatable.")
@click.option(
    "--env", "-e", "env", multiple=True, metavar="KEY=VALUE", help="Environment. Repeatable."
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=None,
    help="process (command + args) or docker (the image); the server runs only its own "
    "RABBITMESH_CONTAINER_RUNTIME [default: say nothing].",
)
@sink_option
@ce_override_option
@api_command
def container_create(
    client: ApiClient,
    name: str,
    namespace: str,
    image: str | None,
    cmd: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    runtime: str | None,
    sink: str,
    ce_overrides: tuple[str, ...],
) -> None:
    if not image and not cmd:
        raise CliError("give --image or --cmd")
    c: dict[str, Any] = {"name": name}
    if image:
        c["image"] = image
    if cmd:
        c["command"] = [cmd]
    if args:
        c["args"] = list(args)
    envs = key_values(env, "--env")
    if envs:
        c["env"] = [{"name": k, "value": v} for k, v in envs.items()]
    spec = {"template": {"spec": {"containers": [c]}}, **_overrides(ce_overrides)}
    annotations = {RUNTIME_ANNOTATION: runtime} if runtime else None
    _create(client, CONTAINERSOURCE, name, namespace, spec, sink, annotations)


# --- apiserver ------------------------------------------------------------------------------

apiserver = _group(
    "apiserver",
    APISERVERSOURCE,
    "ApiServerSources (Kubernetes API events)",
    [
        ("NAME", out.name),
        (
            "RESOURCES",
            lambda o: ",".join(r.get("kind", "") for r in out.spec(o, "resources") or []),
        ),
        ("SINK", lambda o: out.sink_of(o, "sink")),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
)


def _resource(text: str) -> dict[str, Any]:
    """KIND:APIVERSION[:LABEL_SELECTOR], as kn's --resource."""
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CliError(f"--resource {text!r}: expected KIND:APIVERSION[:key=value,...]")
    out_: dict[str, Any] = {"kind": parts[0], "apiVersion": parts[1]}
    if len(parts) == 3 and parts[2]:
        out_["selector"] = {"matchLabels": key_values(parts[2].split(","), "--resource selector")}
    return out_


@apiserver.command(
    "create",
    help="Create an ApiServerSource: events for adds, updates and deletes of Kubernetes "
    "resources."
    + examples(
        "rabbitmesh source apiserver create k8s --resource Event:v1 --sink broker:default",
        "rabbitmesh source apiserver create pods --resource Pod:v1:app=web --mode Resource "
        "--sink ksvc:display",
    ),
)
@click.argument("name")
@namespace_option
@click.option(
    "--resource",
    "resources",
    multiple=True,
    required=True,
    help="KIND:APIVERSION[:key=value,...] to watch. Repeatable.",
)
@click.option(
    "--mode",
    type=click.Choice(["Reference", "Resource"]),
    default="Reference",
    show_default=True,
    help="Send a reference to the object, or the whole object.",
)
@click.option("--service-account", default=None, help="Service account to watch as.")
@click.option(
    "--owner",
    default=None,
    metavar="KIND:APIVERSION",
    help="Only objects whose controller is of this kind (ReplicaSet:apps/v1).",
)
@click.option(
    "--namespace-selector",
    "namespace_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Watch the namespaces with these labels instead of the source's own. Repeatable.",
)
@sink_option
@ce_override_option
@api_command
def apiserver_create(
    client: ApiClient,
    name: str,
    namespace: str,
    resources: tuple[str, ...],
    mode: str,
    service_account: str | None,
    owner: str | None,
    namespace_labels: tuple[str, ...],
    sink: str,
    ce_overrides: tuple[str, ...],
) -> None:
    spec: dict[str, Any] = {"resources": [_resource(r) for r in resources], "mode": mode}
    if service_account:
        spec["serviceAccountName"] = service_account
    if owner:
        kind, _, api_version = owner.partition(":")
        if not kind or not api_version:
            raise CliError(f"--owner {owner!r}: expected KIND:APIVERSION")
        spec["owner"] = {"kind": kind, "apiVersion": api_version}
    if namespace_labels:
        labels = key_values(namespace_labels, "--namespace-selector")
        spec["namespaceSelector"] = {"matchLabels": labels}
    spec.update(_overrides(ce_overrides))
    _create(client, APISERVERSOURCE, name, namespace, spec, sink)


# --- gitlab ---------------------------------------------------------------------------------

gitlab = _group(
    "gitlab",
    GITLABSOURCE,
    "GitLabSources (GitLab project webhooks)",
    [
        ("NAME", out.name),
        ("PROJECT", lambda o: out.spec(o, "projectUrl") or ""),
        ("EVENTS", lambda o: ",".join(out.spec(o, "eventTypes") or [])),
        ("SINK", lambda o: out.sink_of(o, "sink")),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
)


def _secret_ref(text: str, flag: str) -> dict[str, Any]:
    secret, _, key = text.partition(":")
    if not secret or not key:
        raise CliError(f"{flag} {text!r}: expected SECRET:KEY (a Secret made with apply)")
    return {"secretKeyRef": {"name": secret, "key": key}}


@gitlab.command(
    "create",
    help="Create a GitLabSource: GitLab webhook events of a project. Tokens come from a "
    "Secret (create it with `rabbitmesh apply`)."
    + examples(
        "rabbitmesh source gitlab create repo --project-url https://gitlab.com/me/app "
        "--event-types push_events,merge_requests_events --access-token gitlab:accessToken "
        "--secret-token gitlab:secretToken --sink broker:default",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--project-url", required=True, help="URL of the GitLab project.")
@click.option(
    "--event-types", required=True, help="Comma-separated hooks: push_events, issues_events, ..."
)
@click.option("--access-token", required=True, help="SECRET:KEY of a GitLab API token.")
@click.option("--secret-token", required=True, help="SECRET:KEY of the webhook secret token.")
@click.option("--sslverify/--no-sslverify", default=True, help="Verify GitLab's TLS certificate.")
@sink_option
@ce_override_option
@api_command
def gitlab_create(
    client: ApiClient,
    name: str,
    namespace: str,
    project_url: str,
    event_types: str,
    access_token: str,
    secret_token: str,
    sslverify: bool,
    sink: str,
    ce_overrides: tuple[str, ...],
) -> None:
    spec = {
        "projectUrl": project_url,
        "eventTypes": [e.strip() for e in event_types.split(",") if e.strip()],
        "accessToken": _secret_ref(access_token, "--access-token"),
        "secretToken": _secret_ref(secret_token, "--secret-token"),
        "sslverify": sslverify,
        **_overrides(ce_overrides),
    }
    _create(client, GITLABSOURCE, name, namespace, spec, sink)


# --- rabbitmq -------------------------------------------------------------------------------

rabbitmq = _group(
    "rabbitmq",
    RABBITMQSOURCE,
    "RabbitmqSources (the messages of a RabbitMQ queue)",
    [
        ("NAME", out.name),
        ("QUEUE", lambda o: (out.spec(o, "rabbitmqResourcesConfig") or {}).get("queueName", "")),
        ("SINK", lambda o: out.sink_of(o, "sink")),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
)


@rabbitmq.command(
    "create",
    help="Create a RabbitmqSource: each message of a queue becomes a CloudEvent for the sink "
    "(type dev.knative.rabbitmq.event unless it already is one)."
    + examples(
        "rabbitmesh source rabbitmq create orders --queue orders --exchange legacy "
        "--sink broker:default",
        "rabbitmesh source rabbitmq create ext --queue q --predeclared "
        "--connection-secret other-rabbit --parallelism 10 --sink broker:default",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--queue", required=True, help="Queue to consume (declared unless --predeclared).")
@click.option("--exchange", default=None, help="Exchange the queue is bound to (with '#').")
@click.option("--predeclared", is_flag=True, help="Use the existing queue as is.")
@click.option(
    "--parallelism",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Messages in flight at once (1 keeps the queue's order).",
)
@rabbitmq_connection_options
@sink_option
@ce_override_option
@api_command
def rabbitmq_create(
    client: ApiClient,
    name: str,
    namespace: str,
    queue: str,
    exchange: str | None,
    predeclared: bool,
    parallelism: int,
    vhost: str | None,
    connection_secret: str | None,
    sink: str,
    ce_overrides: tuple[str, ...],
) -> None:
    config: dict[str, Any] = {"queueName": queue, "parallelism": parallelism}
    if exchange:
        config["exchangeName"] = exchange
    if predeclared:
        config["predeclared"] = True
    if vhost:
        config["vhost"] = vhost
    spec: dict[str, Any] = {"rabbitmqResourcesConfig": config, **_overrides(ce_overrides)}
    if connection_secret:
        spec["rabbitmqClusterReference"] = {"connectionSecret": {"name": connection_secret}}
    _create(client, RABBITMQSOURCE, name, namespace, spec, sink)
