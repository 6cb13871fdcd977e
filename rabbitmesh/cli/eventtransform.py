"""`rabbitmesh eventtransform create|list|describe|delete` (EventTransform, JSONata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import EVENTTRANSFORM, ApiClient, CliError
from rabbitmesh.cli.common import api_command, api_group, namespace_option
from rabbitmesh.cli.sinks import parse_sink
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

eventtransform = api_group(
    "eventtransform",
    "Manage EventTransforms: JSONata over whole events, the result the reply or sent to a sink.",
)


def _text(value: str | None, path: Path | None, flag: str) -> str | None:
    if value is not None and path is not None:
        raise CliError(f"give {flag} or {flag}-file, not both")
    return path.read_text() if path is not None else value


@eventtransform.command(
    "create",
    help="Create an EventTransform."
    + examples(
        "rabbitmesh eventtransform create shape --expression-file shape.jsonata",
        "rabbitmesh eventtransform create fwd --expression '$' --sink http://svc/ --reply-discard",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--expression", help="The JSONata expression (over attributes + data).")
@click.option("--expression-file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--sink", help="Send the transformed event here (ksvc:NAME, broker:NAME, URL).")
@click.option("--reply-expression", help="JSONata applied to the sink's response.")
@click.option(
    "--reply-expression-file", type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@click.option("--reply-discard", is_flag=True, help="Answer with the sink's status only.")
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    expression: str | None,
    expression_file: Path | None,
    sink: str | None,
    reply_expression: str | None,
    reply_expression_file: Path | None,
    reply_discard: bool,
) -> None:
    expr = _text(expression, expression_file, "--expression")
    if not expr:
        raise CliError("an expression is required: --expression or --expression-file")
    spec: dict[str, Any] = {"jsonata": {"expression": expr}}
    if sink:
        spec["sink"] = parse_sink(sink)
    reply = _text(reply_expression, reply_expression_file, "--reply-expression")
    if reply is not None or reply_discard:
        spec["reply"] = {"discard": True} if reply_discard else {"jsonata": {"expression": reply}}
    create_resource(client, EVENTTRANSFORM, name, namespace, spec)


def _sink(obj: dict[str, Any]) -> str:
    return ((obj.get("status") or {}).get("sinkUri")) or "(reply)"


add_verbs(
    eventtransform,
    EVENTTRANSFORM,
    columns=[
        ("NAME", out.name),
        ("URL", out.url),
        ("SINK", _sink),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List EventTransforms." + examples("rabbitmesh eventtransform list"),
    fields=lambda o: [
        ("URL", out.url(o)),
        ("Sink", _sink(o)),
        ("Expression", (out.spec(o, "jsonata") or {}).get("expression", "").strip()),
    ],
    describe_help="Show an EventTransform." + examples("rabbitmesh eventtransform describe shape"),
    delete_help="Delete EventTransforms." + examples("rabbitmesh eventtransform delete x"),
)
