"""`rabbitmesh sinkbinding create|list|describe|delete|exec`, as `kn source binding`.

`exec NAME -- CMD...` is what Knative's SinkBinding does to a Deployment's pods, for one
process: it reads the SinkBinding (its resolved sink) from the API and runs CMD with
K_SINK, K_CE_OVERRIDES, NAME and NAMESPACE set (rabbitmesh/sources/sinkbinding.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import SINKBINDING, ApiClient, CliError
from rabbitmesh.cli.common import api_command, api_group, key_values, namespace_option
from rabbitmesh.cli.sinks import parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples
from rabbitmesh.sources.sinkbinding import NotBound, env_of

SINK_HELP = "Where events go: ksvc:NAME, svc:NAME, broker:NAME, channel:NAME, NAME or a URL."


sinkbinding = api_group(
    "sinkbinding",
    "Manage SinkBindings: a sink (and CloudEvent overrides) for a program you run with "
    "`rabbitmesh sinkbinding exec`.",
)


def _subject(text: str) -> dict[str, Any]:
    """KIND:APIVERSION:NAME, or KIND:APIVERSION:key=value,... (a selector), as kn's --subject."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise CliError(f"--subject {text!r}: expected KIND:APIVERSION:NAME or ...:key=value")
    kind, api_version, rest = parts
    subject: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    if "=" in rest:
        subject["selector"] = {"matchLabels": key_values(rest.split(","), "--subject")}
    else:
        subject["name"] = rest
    return subject


def _subject_text(obj: dict[str, Any]) -> str:
    subject = (obj.get("spec") or {}).get("subject") or {}
    if not subject:
        return ""
    what = subject.get("name") or ",".join(
        f"{k}={v}" for k, v in ((subject.get("selector") or {}).get("matchLabels") or {}).items()
    )
    return f"{subject.get('kind', '')}:{subject.get('apiVersion', '')}:{what}"


@sinkbinding.command(
    "create",
    help="Create a SinkBinding."
    + examples(
        "rabbitmesh sinkbinding create bind --sink broker:default",
        "rabbitmesh sinkbinding create bind --subject Deployment:apps/v1:app --sink ksvc:display "
        "--ce-override team=a",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--subject", default=None, help="KIND:APIVERSION:NAME it binds (informative here).")
@click.option("--sink", "-s", required=True, help=SINK_HELP)
@click.option(
    "--ce-override",
    "ce_overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="CloudEvents extension for the program to add (K_CE_OVERRIDES). Repeatable.",
)
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    subject: str | None,
    sink: str,
    ce_overrides: tuple[str, ...],
) -> None:
    spec: dict[str, Any] = {"sink": parse_sink(sink)}
    if subject:
        spec["subject"] = _subject(subject)
    ext = key_values(ce_overrides, "--ce-override")
    if ext:
        spec["ceOverrides"] = {"extensions": ext}
    create_resource(client, SINKBINDING, name, namespace, spec)


add_verbs(
    sinkbinding,
    SINKBINDING,
    columns=[
        ("NAME", out.name),
        ("SUBJECT", _subject_text),
        ("SINK", lambda o: out.sink_of(o, "sink")),
        ("URI", lambda o: (o.get("status") or {}).get("sinkUri", "")),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List SinkBindings." + examples("rabbitmesh sinkbinding list"),
    fields=lambda o: [
        ("Sink", out.sink_of(o, "sink")),
        ("Sink URI", (o.get("status") or {}).get("sinkUri", "")),
    ],
    describe_help="Show a SinkBinding." + examples("rabbitmesh sinkbinding describe bind"),
    delete_help="Delete SinkBindings." + examples("rabbitmesh sinkbinding delete b"),
)


@sinkbinding.command(
    "exec",
    help="Run CMD with the SinkBinding's environment: K_SINK (its resolved sink), "
    "K_CE_OVERRIDES, NAME and NAMESPACE. Put `--` before CMD. CMD replaces this process (its "
    "exit status is CMD's)."
    + examples(
        "rabbitmesh sinkbinding exec bind -- rabbitmesh heartbeats --period 1s",
        "rabbitmesh sinkbinding exec bind -n team -- ./my-producer --verbose",
    ),
)
@click.argument("name")
@namespace_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@api_command
def exec_(client: ApiClient, name: str, namespace: str, command: tuple[str, ...]) -> None:
    obj = client.get(SINKBINDING, namespace, name)
    try:
        env = env_of(obj)
    except NotBound as e:
        raise CliError(str(e)) from None
    sys.stdout.flush()
    try:
        os.execvpe(command[0], list(command), {**os.environ, **env})
    except OSError as e:
        raise CliError(f"{command[0]}: {e.strerror or e}") from None
