"""`rabbitmesh deadletter list|redrive|purge` (docs/delivery.md, "Dead-letter store")."""

from __future__ import annotations

from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import SUBSCRIPTION, TRIGGER, ApiClient, CliError
from rabbitmesh.cli.common import api_command, api_group, namespace_option
from rabbitmesh.cli.verbs import examples

deadletter = api_group(
    "deadletter",
    "See the events that failed for good and send them again.\n\n"
    "Events a trigger or subscription could not deliver, with no dead-letter sink (or that "
    "the sink refused), are kept for RABBITMESH_DEAD_LETTER_RETENTION (default 7 days). "
    "Listing changes nothing; redrive puts them back through delivery with a fresh retry "
    "budget; purge forgets them.",
)


def owner_options(f: Any) -> Any:
    f = click.option("--subscription", "-S", help="The subscription whose dead letters.")(f)
    f = click.option("--trigger", "-t", help="The trigger whose dead letters.")(f)
    return namespace_option(f)


def subresource(namespace: str, trigger: str | None, subscription: str | None) -> str:
    if (trigger is None) == (subscription is None):
        raise CliError("give exactly one of --trigger and --subscription")
    if trigger is not None:
        return TRIGGER.path(namespace, trigger) + "/deadletters"
    assert subscription is not None
    return SUBSCRIPTION.path(namespace, subscription) + "/deadletters"


def _short(text: Any, width: int) -> str:
    s = "" if text is None else str(text).replace("\n", " ")
    return s if len(s) <= width else s[: width - 3] + "..."


COLUMNS: list[out.Column] = [
    ("ID", lambda d: str(d.get("id") or "")),
    ("TYPE", lambda d: str(d.get("type") or "")),
    ("SOURCE", lambda d: str(d.get("source") or "")),
    ("FAILED", lambda d: str(d.get("failedAt") or "")),
    ("CODE", lambda d: str(d.get("knativeerrorcode") or "")),
    ("ATTEMPTS", lambda d: "" if d.get("attempts") is None else str(d["attempts"])),
    ("ERROR", lambda d: _short(d.get("knativeerrordata") or d.get("reason"), 60)),
]


@deadletter.command(
    "list",
    help="List the dead letters of a trigger or subscription, oldest first."
    + examples(
        "rabbitmesh deadletter list --trigger orders",
        "rabbitmesh deadletter list --subscription audit -o json",
    ),
)
@owner_options
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), help="Output format.")
@api_command
def list_(
    client: ApiClient,
    namespace: str,
    trigger: str | None,
    subscription: str | None,
    output: str | None,
) -> None:
    items = client.request("GET", subresource(namespace, trigger, subscription))["items"]
    if output:
        click.echo(out.dump(items, output))
    elif not items:
        click.echo("No dead letters.")
    else:
        click.echo(out.table(items, COLUMNS, all_ns=False))


def action_options(f: Any) -> Any:
    f = click.option("--all", "everything", is_flag=True, help="Every dead letter listed now.")(f)
    f = click.option("--id", "ids", multiple=True, help="Event id to act on. Repeatable.")(f)
    return owner_options(f)


def _action(action: str, done: str, help_text: str) -> None:
    """`deadletter redrive|purge`: POST the chosen dead letters to the owner's `action`."""

    @deadletter.command(action, help=help_text)
    @action_options
    @api_command
    def cmd(
        client: ApiClient,
        namespace: str,
        trigger: str | None,
        subscription: str | None,
        ids: tuple[str, ...],
        everything: bool,
    ) -> None:
        if bool(ids) == everything:
            raise CliError("give --id (repeatable) or --all")
        body: dict[str, Any] = {"all": True} if everything else {"ids": list(ids)}
        path = subresource(namespace, trigger, subscription) + "/" + action
        result = client.request("POST", path, body)
        click.echo(f"{result['count']} dead letter(s) {done}.")


_action(
    "redrive",
    "redriven",
    "Send dead letters back through delivery (the trigger's filter, ordering, retries "
    "and dead letters apply again), with a fresh retry budget."
    + examples(
        "rabbitmesh deadletter redrive --trigger orders --id 1234 --id 1235",
        "rabbitmesh deadletter redrive --subscription audit --all",
    ),
)
_action(
    "purge",
    "purged",
    "Forget dead letters without sending them."
    + examples("rabbitmesh deadletter purge --trigger orders --all"),
)
