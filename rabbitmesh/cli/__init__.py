"""The `rabbitmesh` command. Each group of subcommands lives in its own module."""

from __future__ import annotations

import click

from rabbitmesh import __version__
from rabbitmesh.cli.broker import broker
from rabbitmesh.cli.channel import channel
from rabbitmesh.cli.eventtype import eventtype
from rabbitmesh.cli.manifests import apply, delete, get, patch
from rabbitmesh.cli.rabbitmqsink import rabbitmqsink
from rabbitmesh.cli.run import run
from rabbitmesh.cli.send import send
from rabbitmesh.cli.sinkbinding import sinkbinding
from rabbitmesh.cli.source import source
from rabbitmesh.cli.subscription import subscription
from rabbitmesh.cli.tools import TOOLS
from rabbitmesh.cli.trigger import trigger


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rabbitmesh")
def cli() -> None:
    """Knative Eventing's brokers, triggers, channels, flows and sources on RabbitMQ.

    Start everything with `rabbitmesh run`; manifests in RABBITMESH_CONFIG_DIR (./config)
    are applied at start and whenever a file changes. The other commands talk to a running
    rabbitmesh (--server, env RABBITMESH_SERVER, default http://localhost:8080 or the
    port RABBITMESH_HTTP_PORT gives), as kubectl
    (apply, get, delete) and kn (broker, trigger, ...) do. See README.md and docs/.
    """


cli.add_command(run)
# Talking to a running rabbitmesh through its admin API (kubectl- and kn-like).
_API_COMMANDS = (
    apply,
    get,
    patch,
    delete,
    broker,
    trigger,
    channel,
    subscription,
    source,
    sinkbinding,
    rabbitmqsink,
    eventtype,
)
for _command in (*_API_COMMANDS, send):
    cli.add_command(_command)
for _tool in TOOLS:
    cli.add_command(_tool)


def main() -> None:
    cli(prog_name="rabbitmesh")
