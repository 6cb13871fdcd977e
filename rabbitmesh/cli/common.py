"""What every API-talking command shares: --server/--token, -n/-A, errors in one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from rabbitmesh.cli.client import (
    SERVER_DEFAULT_HELP,
    ApiClient,
    CliError,
    default_server,
    server_origin,
)

#: Settings every group's help points at.
CONNECTION_HELP = (
    "Commands reach a running `rabbitmesh run` through its admin API: --server "
    f"(env RABBITMESH_SERVER, default {SERVER_DEFAULT_HELP}) and, when the server sets "
    "RABBITMESH_ADMIN_TOKEN, --token (env RABBITMESH_ADMIN_TOKEN)."
)


def api_group(name: str, help_text: str) -> click.Group:
    """A command group of API-talking commands: its help ends with CONNECTION_HELP."""
    return click.Group(name, help=help_text + "\n\n" + CONNECTION_HELP)


namespace_option = click.option(
    "-n",
    "--namespace",
    default="default",
    show_default=True,
    help="Namespace to work in.",
)
all_namespaces_option = click.option(
    "-A",
    "--all-namespaces",
    is_flag=True,
    help="List across every namespace (ignores -n).",
)


def rabbitmq_connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--vhost and --connection-secret: which RabbitMQ a source or sink of that broker uses."""
    f = click.option(
        "--connection-secret",
        default=None,
        help="Secret whose key `uri` is another RabbitMQ's AMQP URL [default: rabbitmesh's].",
    )(f)
    return click.option("--vhost", default=None, help="Virtual host (default: the URL's).")(f)


def api_command(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --server and --token, passes an ApiClient first, prints CliError in one line."""

    @functools.wraps(f)
    def wrapper(server: str, token: str | None, **kwargs: Any) -> Any:
        source = click.get_current_context().get_parameter_source("server")
        given = source not in (None, click.core.ParameterSource.DEFAULT)
        try:
            return f(ApiClient(server, token, server_origin(server, given)), **kwargs)
        except CliError as e:
            click.echo(f"rabbitmesh: {e}", err=True)
            sys.exit(1)

    wrapper = click.option(
        "--token",
        envvar="RABBITMESH_ADMIN_TOKEN",
        default=None,
        help="Bearer token for changes, when the server sets RABBITMESH_ADMIN_TOKEN "
        "[env RABBITMESH_ADMIN_TOKEN].",
    )(wrapper)
    wrapper = click.option(
        "--server",
        envvar="RABBITMESH_SERVER",
        default=default_server,
        show_default=SERVER_DEFAULT_HELP,
        help="URL of the rabbitmesh API [env RABBITMESH_SERVER].",
    )(wrapper)
    return wrapper


def key_values(pairs: Iterable[str], flag: str) -> dict[str, str]:
    """`KEY=VALUE` flags into a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def metadata(name: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def echo_done(kind: str, name: str, what: str, namespace: str | None) -> None:
    """kn's confirmation line: `Broker 'br' successfully created in namespace 'default'.`"""
    where = f" in namespace '{namespace}'" if namespace else ""
    click.echo(f"{kind} '{name}' successfully {what}{where}.")
