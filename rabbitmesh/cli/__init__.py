"""The `rabbitmesh` command. Each group of subcommands lives in its own module."""

from __future__ import annotations

import click

from rabbitmesh import __version__
from rabbitmesh.cli.run import run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rabbitmesh")
def cli() -> None:
    """Knative Eventing's brokers, triggers, channels, flows and sources on RabbitMQ.

    Start everything with `rabbitmesh run`; manifests in RABBITMESH_CONFIG_DIR (./config)
    are applied at start. See README.md and docs/ for the rest.
    """


cli.add_command(run)


def main() -> None:
    cli(prog_name="rabbitmesh")
