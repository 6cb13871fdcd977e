"""Broker -> a durable topic exchange (routing key = event type)."""

from __future__ import annotations

from typing import Any

import aio_pika

from rabbitmesh.amqp.streams import StreamArgumentsDiffer, declare_stream
from rabbitmesh.ingress.auth import problem as auth_problem
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.replay import archive_limits

KIND = "Broker"
ORDER = 10


async def reconcile(ctx: Context, broker: Broker) -> None:
    await ctx.topology.declare_exchange(
        ctx.names.broker_exchange(broker.namespace, broker.name), aio_pika.ExchangeType.TOPIC
    )
    await reconcile_archive(ctx, broker)
    broker.status.address = Address(
        url=address_url(ctx.settings.base_url, KIND, broker.namespace, broker.name)
    )
    why = auth_problem(ctx.get, broker)
    if why is not None:  # fail closed: the ingress takes nothing it cannot authenticate
        broker.status.set_ready(False, "IngressTokenSecretMissing", why)
        return
    broker.status.set_ready(True, "BrokerReady", "")


async def reconcile_archive(ctx: Context, broker: Broker) -> None:
    """The broker's archive (docs/replay.md): a stream bound to its exchange with `#`, so it
    gets every event the broker accepts (ingress, replies, sources) in arrival order; no
    annotation, no archive (deleting the stream deletes what it held)."""
    stream = ctx.names.archive_stream(broker.namespace, broker.name)
    limits = archive_limits(broker)
    extra = broker.status.model_extra
    assert extra is not None
    if limits is None:
        await ctx.topology.delete_queue(stream)
        extra.pop("archive", None)
        return
    seconds, max_bytes = limits
    arguments: dict[str, Any] = {"x-max-age": f"{seconds}s"}
    if max_bytes is not None:
        arguments["x-max-length-bytes"] = max_bytes
    note = ""
    try:
        await declare_stream(ctx.publisher, stream, arguments)
    except StreamArgumentsDiffer:
        # A stream's retention cannot change in place; the archive keeps the one it was
        # made with (docs/replay.md: remove the annotation, then set it again, or a policy).
        note = "kept with the retention it was created with"
    await ctx.topology.bind(stream, ctx.names.broker_exchange(broker.namespace, broker.name), "#")
    extra["archive"] = {"stream": stream, **({"note": note} if note else {})}


async def finalize(ctx: Context, broker: Broker) -> None:
    await ctx.topology.delete_queue(ctx.names.archive_stream(broker.namespace, broker.name))
    exchange = ctx.names.broker_exchange(broker.namespace, broker.name)
    await ctx.topology.delete_exchange(exchange)
    # Its bindings went with it: a broker of the same name made later must be bound again.
    for pairs in ctx.bindings.values():
        pairs.difference_update({p for p in pairs if p[0] == exchange})
