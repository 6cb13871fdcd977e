"""`rabbitmesh send`: post one CloudEvent (binary mode) to a broker, channel or URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import click

from rabbitmesh.cli.client import POINT_ELSEWHERE, SERVER_DEFAULT_HELP, CliError, default_server
from rabbitmesh.cli.common import key_values
from rabbitmesh.cloudevents.percent import percent_encode as encode_header_value
from rabbitmesh.hosted import HOSTED_KINDS

#: --to prefixes -> the ingress path of that kind (rabbitmesh/hosted.py, docs/contract.md §3).
PATHS = {k.cli_prefix: k.path for k in HOSTED_KINDS}
TO_HELP = ", ".join(f"{prefix}:NAME" for prefix in sorted(PATHS)) + " or a URL"


def target_url(to: str, server: str, namespace: str) -> str:
    if to.startswith(("http://", "https://")):
        return to
    prefix, _, rest = to.partition(":")
    name, _, ns = rest.partition(":")
    if prefix not in PATHS or not name:
        raise CliError(f"--to {to!r}: use {TO_HELP}")
    return server.rstrip("/") + PATHS[prefix].format(namespace=ns or namespace, name=name)


@click.command()
@click.option("--to", required=True, help=TO_HELP + ".")
@click.option("--type", "-t", "type_", required=True, help="CloudEvents type.")
@click.option("--source", "-s", required=True, help="CloudEvents source.")
@click.option("--data", "-d", default=None, help="Event data (JSON is sent as JSON).")
@click.option("--id", "id_", default=None, help="Event id [default: a fresh UUID].")
@click.option("--subject", default=None, help="CloudEvents subject.")
@click.option(
    "--content-type", default=None, help="datacontenttype [default: JSON if --data parses as JSON]."
)
@click.option(
    "--extension",
    "-e",
    "extensions",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extension attribute. Repeatable.",
)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace.")
@click.option(
    "--server",
    envvar="RABBITMESH_SERVER",
    default=default_server,
    show_default=SERVER_DEFAULT_HELP,
    help="rabbitmesh to send through, for broker:/channel: targets [env RABBITMESH_SERVER].",
)
def send(
    to: str,
    type_: str,
    source: str,
    data: str | None,
    id_: str | None,
    subject: str | None,
    content_type: str | None,
    extensions: tuple[str, ...],
    namespace: str,
    server: str,
) -> None:
    """Send one CloudEvent (binary mode, specversion 1.0) and wait for it to be accepted.

    \b
    Examples:
      rabbitmesh send --to broker:default --type com.example.hello --source me --data '{"a":1}'
      rabbitmesh send --to channel:ch1 -t greeting -s cli -d hello --extension trace=abc
      rabbitmesh send --to http://127.0.0.1:9001/ -t ping -s cli
    """
    try:
        url = target_url(to, server, namespace)
        event_id = id_ or str(uuid.uuid4())
        headers = {
            "ce-specversion": "1.0",
            "ce-id": encode_header_value(event_id),
            "ce-type": encode_header_value(type_),
            "ce-source": encode_header_value(source),
        }
        if subject:
            headers["ce-subject"] = encode_header_value(subject)
        for key, value in key_values(extensions, "--extension").items():
            if not key.isalnum() or not key.islower():
                raise CliError(f"--extension {key!r}: names are lowercase letters and digits")
            headers[f"ce-{key}"] = encode_header_value(value)
        body = b""
        if data is not None:
            body = data.encode()
            if content_type is None:
                try:
                    json.loads(data)
                    content_type = "application/json"
                except ValueError:
                    content_type = "text/plain; charset=utf-8"
        if content_type:
            headers["Content-Type"] = content_type
        status, text = _post(url, headers, body)
    except CliError as e:
        click.echo(f"rabbitmesh: {e}", err=True)
        raise SystemExit(1) from None
    if status >= 300:
        click.echo(f"rabbitmesh: {url} answered {status}: {text}", err=True)
        raise SystemExit(1)
    click.echo(f"Event '{event_id}' sent to {url} ({status}).")


def _post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        raw = e.read().decode(errors="replace")
        try:
            raw = json.loads(raw).get("error", raw)
        except (ValueError, AttributeError):
            pass
        return e.code, raw.strip()
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        detail = "connection refused" if isinstance(why, ConnectionRefusedError) else why
        raise CliError(f"cannot reach {url} ({detail}); {POINT_ELSEWHERE}") from None
