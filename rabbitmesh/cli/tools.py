"""The helper services of Knative's samples: `rabbitmesh event-display|appender|filter|heartbeats`.

Each is its own process, as the seed's examples run them (docs/contract.md §7); docs/examples/
shows them wired to channels, sequences and parallels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import click

DEFAULT_MESSAGE = "boring default msg, change me with env[MESSAGE]"


def _listen(func: Any) -> Any:
    func = click.option(
        "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="HTTP port."
    )(func)
    return click.option(
        "--host", default="0.0.0.0", show_default=True, help="HTTP listen address."
    )(func)


@click.command("event-display")
@_listen
def event_display(host: str, port: int) -> None:
    """Print every CloudEvent received, as Knative's event_display does.

    \b
    Example:
      rabbitmesh event-display --port 9000
    """
    from rabbitmesh.tools import event_display as tool
    from rabbitmesh.tools.service import serve

    serve(tool.app(), host, port, "event-display")


@click.command()
@click.option(
    "--message",
    envvar="MESSAGE",
    default=DEFAULT_MESSAGE,
    show_default="env MESSAGE, else Knative's default",
    help="Text appended to data.message.",
)
@click.option("--type", "type_", envvar="TYPE", default=None, help="Set the reply's type.")
@_listen
def appender(message: str, type_: str | None, host: str, port: int) -> None:
    """Reply with each event, its data.message extended by MESSAGE.

    \b
    Example:
      rabbitmesh appender --message " - Handled by SQ-01" --port 9101
    """
    from rabbitmesh.tools import appender as tool
    from rabbitmesh.tools.service import serve

    serve(tool.app(message, type_), host, port, f"appender ({message!r})")


@click.command("filter")
@click.option(
    "--expression",
    envvar="FILTER",
    required=True,
    help="CESQL expression; events for which it is true are replied, others dropped [env FILTER].",
)
@_listen
def filter_(expression: str, host: str, port: int) -> None:
    """Reply with each event for which a CESQL expression is true; empty 200 otherwise.

    \b
    Example:
      rabbitmesh filter --expression "type = 'img.hj.com'" --port 9201
    """
    from rabbitmesh.cesql import CesqlParseError, compile_expression
    from rabbitmesh.tools import filter as tool
    from rabbitmesh.tools.service import serve

    try:
        compiled = compile_expression(expression)
    except CesqlParseError as e:
        raise click.BadParameter(str(e), param_hint="--expression") from None
    serve(tool.app(compiled), host, port, f"filter ({expression})")


def _period(_ctx: Any, _param: Any, value: str) -> float:
    from rabbitmesh.tools.heartbeats import parse_period

    try:
        return parse_period(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.option(
    "--sink", envvar="K_SINK", required=True, help="Where to post the events [env K_SINK]."
)
@click.option(
    "--period",
    default="5s",
    show_default=True,
    callback=_period,
    help="Time between beats: seconds (5, 0.5) or a Go duration (1s, 500ms, 1m).",
)
@click.option("--label", default="", help="data.label of every beat.")
@click.option("--event-type", "--eventType", "event_type", default=None, help="Event type.")
@click.option(
    "--event-source",
    "--eventSource",
    "event_source",
    default=None,
    help="Event source [default https://knative.dev/eventing/cmd/heartbeats/#NAMESPACE/NAME].",
)
@click.option(
    "--one-shot", envvar="ONE_SHOT", is_flag=True, help="Send one beat and exit [env ONE_SHOT]."
)
def heartbeats(
    sink: str,
    period: float,
    label: str,
    event_type: str | None,
    event_source: str | None,
    one_shot: bool,
) -> None:
    """Post a heartbeat event to $K_SINK every --period (what a ContainerSource runs).

    K_CE_OVERRIDES (`{"extensions": {...}}`) adds extensions to every event.

    \b
    Example:
      K_SINK=http://localhost:8080/default/br1 rabbitmesh heartbeats --period 1s
    """
    from rabbitmesh.tools import heartbeats as tool

    try:
        overrides = tool.parse_overrides(os.environ.get("K_CE_OVERRIDES"))
    except ValueError as e:
        click.echo(f"rabbitmesh heartbeats: {e}", err=True)
        sys.exit(2)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    if label.startswith('"') and label.endswith('"') and len(label) >= 2:
        label = label[1:-1]  # as the Go sample unquotes a quoted label

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await tool.run(
                sink,
                period,
                source=event_source or tool.default_source(os.environ),
                type_=event_type or tool.DEFAULT_TYPE,
                label=label,
                overrides=overrides,
                one_shot=one_shot,
            )

    asyncio.run(main())


TOOLS = (event_display, appender, filter_, heartbeats)
