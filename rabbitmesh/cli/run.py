"""`rabbitmesh run`: every setting is also a flag (`--http-port` for RABBITMESH_HTTP_PORT)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import typing
from typing import Any

import click

from rabbitmesh.settings import Settings, SettingsError, load_settings


def _flag_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(base)])
    if base is int:
        return int
    if base is float:
        return float
    return str


def setting_options(func: Any) -> Any:
    """One `--flag` per Settings field, overriding its environment variable."""
    for name, field in reversed(list(Settings.model_fields.items())):
        env = f"RABBITMESH_{name.upper()}"
        default = "unset" if field.default is None else field.default
        func = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=_flag_type(field.annotation),
            default=None,
            help=f"{field.description} [env {env}; default {default}]",
            show_default=False,
        )(func)
    return func


@click.command()
@setting_options
def run(**flags: Any) -> None:
    """Run rabbitmesh: ingress, reconciler, dispatchers and sources, on every core.

    One worker process per core (--workers N to choose), all on one HTTP port.

    \b
    Examples:
      rabbitmesh run
      RABBITMESH_CONFIG_DIR=config/examples rabbitmesh run --http-port 8081
      rabbitmesh run --role ingress      # split roles across processes
    """
    from rabbitmesh.amqp.names import Names
    from rabbitmesh.config.checks import ManifestChecks
    from rabbitmesh.listen import ListenError
    from rabbitmesh.logs import setup_logging
    from rabbitmesh.resources.loader import ManifestError
    from rabbitmesh.store.configsync import forget_preparsed, preparse

    try:
        settings = load_settings(**flags)
    except SettingsError as e:
        click.echo(f"rabbitmesh: {e}", err=True)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    if settings.config_dir.exists():
        try:
            # Fail fast, before waiting on RabbitMQ; names must fit RabbitMQ's limits. Kept for
            # the control plane (of the workers forked below): parsed once, not per worker.
            preparse(settings.config_dir, ManifestChecks(Names(settings.topology_prefix)))
        except ManifestError as e:
            click.echo(f"rabbitmesh: invalid manifest: {e}", err=True)
            sys.exit(1)
    from rabbitmesh.workers import WorkerInfo, default_workers, supervise

    workers = settings.workers or default_workers()
    if workers > 1 and WorkerInfo.from_env() is None:

        def work(port: int) -> int:
            return serve(settings.model_copy(update={"workers": 1, "http_port": port}))

        try:
            status = supervise(
                workers,
                settings.http_host,
                settings.http_port,
                work,
                preload=lambda: importlib.import_module("rabbitmesh.server"),
                # The workers have their copy of the parsed config dir; the supervisor's
                # would only hold memory (a restarted worker parses the dir itself).
                started=forget_preparsed,
            )
        except ListenError as e:
            click.echo(f"rabbitmesh: {e}", err=True)
            sys.exit(1)
        sys.exit(status)
    sys.exit(serve(settings))


def serve(settings: Settings) -> int:
    """One process: the event loop with the whole server, until it stops; the exit status."""
    from rabbitmesh.listen import ListenError
    from rabbitmesh.server import Server

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(Server(settings).run_forever())
    except ListenError as e:
        click.echo(f"rabbitmesh: {e}", err=True)
        return 1
    return 0
