"""The list / describe / delete commands every kn-style group has, made per kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import ApiClient, Kind
from rabbitmesh.cli.common import (
    all_namespaces_option,
    api_command,
    echo_done,
    metadata,
    namespace_option,
)


def create_resource(
    client: ApiClient,
    kind: Kind,
    name: str,
    namespace: str,
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
    shown: str | None = None,
) -> None:
    """Creates `name` of `kind` with `spec` (and `annotations`) and prints kn's confirmation,
    naming the kind as `shown` when kn spells it otherwise (Eventtype)."""
    meta = metadata(name, namespace)
    if annotations:
        meta["annotations"] = annotations
    client.create(
        kind,
        namespace,
        {
            "apiVersion": f"{kind.group}/{kind.version}",
            "kind": kind.kind,
            "metadata": meta,
            "spec": spec,
        },
    )
    echo_done(shown or kind.kind, name, "created", namespace)


def list_command(
    kind: Kind, columns: Sequence[out.Column], help_text: str, name: str = "list"
) -> click.Command:
    @click.command(name, help=help_text)
    @namespace_option
    @all_namespaces_option
    @out.output_option
    @api_command
    def cmd(client: ApiClient, namespace: str, all_namespaces: bool, output: str | None) -> None:
        ns = None if all_namespaces else namespace
        items = client.list(kind, ns)
        items.sort(key=lambda o: (out.namespace(o), out.name(o)))
        out.print_list(
            items,
            columns,
            what=kind.plural,
            output=output,
            all_ns=all_namespaces,
            namespace_name=ns,
        )

    return cmd


def describe_command(
    kind: Kind, fields: Callable[[dict[str, Any]], Sequence[tuple[str, str]]], help_text: str
) -> click.Command:
    @click.command("describe", help=help_text)
    @click.argument("name")
    @namespace_option
    @out.output_option
    @api_command
    def cmd(client: ApiClient, name: str, namespace: str, output: str | None) -> None:
        obj = client.get(kind, namespace, name)
        if output:
            click.echo(out.dump(obj, output))
            return
        click.echo(out.describe(obj, fields(obj)))

    return cmd


def delete_command(kind: Kind, help_text: str) -> click.Command:
    @click.command("delete", help=help_text)
    @click.argument("names", nargs=-1, required=True)
    @namespace_option
    @api_command
    def cmd(client: ApiClient, names: tuple[str, ...], namespace: str) -> None:
        for name in names:
            client.delete(kind, namespace, name)
            echo_done(kind.kind, name, "deleted", namespace)

    return cmd


def add_verbs(
    group: click.Group,
    kind: Kind,
    *,
    columns: Sequence[out.Column],
    list_help: str,
    fields: Callable[[dict[str, Any]], Sequence[tuple[str, str]]],
    describe_help: str,
    delete_help: str,
) -> None:
    """Gives `group` kn's list, describe and delete of `kind`."""
    group.add_command(list_command(kind, columns, list_help))
    group.add_command(describe_command(kind, fields, describe_help))
    group.add_command(delete_command(kind, delete_help))


def examples(*lines: str) -> str:
    """A help epilog click prints as written (\\b keeps the lines apart)."""
    return "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
