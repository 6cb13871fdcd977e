"""RabbitmqSink -> an ingress path whose events go to an existing exchange, confirmed before 2xx.

`POST /rabbitmqsinks/{namespace}/{name}` takes CloudEvents as any ingress does (binary,
structured, batch) and publishes each to `spec.exchangeName` on rabbitmesh's RabbitMQ or the
one `spec.connectionSecret` names, with the routing key `spec.routingKey` makes of the event
(`{attribute}` placeholders), in the AMQP binding or as JSON (`spec.contentMode`). It answers
202 only once RabbitMQ confirmed every event, 503 (with Retry-After) otherwise, also when no
queue is bound for the routing key (the message would be dropped), and 400 when an event
lacks an attribute the routing key names.

The exchange is never declared: it belongs to the RabbitMQ application the sink feeds. While
it does not exist the sink is not Ready (`ExchangeNotFound`) and its path answers 503. Each
RabbitMQ URL gets a connection of its own (rabbitmesh/amqp/remote.py), so a channel error
there (the exchange deleted under a publish) never touches the connection brokers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika

from rabbitmesh.amqp.remote import ClusterNotReady, check_not_ours, cluster_for
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent
from rabbitmesh.dataplane import Target
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.bridges import PLACEHOLDER, RabbitmqSink

KIND = "RabbitmqSink"
ORDER = 10
#: How long a reconcile waits for a new connection before it fails (and is retried).
CONNECT_WAIT = 5.0


def routing_key(template: str):  # type: ignore[no-untyped-def]
    """The routing key function of a template: "{type}", "orders.{subject}", "fixed"."""
    names = PLACEHOLDER.findall(template)
    if not names:
        return lambda _event: template

    def key(event: CloudEvent) -> str:
        def value(m: object) -> str:
            name = m.group(1)  # type: ignore[attr-defined]
            v = event.attributes.get(name)
            if v is None or v == "":
                raise InvalidEvent(
                    f"attribute {name!r} is required: this sink's routing key is {template!r}"
                )
            return str(v)

        text = PLACEHOLDER.sub(value, template)
        if len(text.encode()) > 255:
            raise InvalidEvent(f"routing key from {template!r} is over 255 bytes")
        return text

    return key


async def reconcile(ctx: Context, sink: RabbitmqSink) -> None:
    key = sink.key
    try:
        cluster = cluster_for(
            ctx.get, sink.namespace, sink.connection_secret, sink.spec.vhost, ctx.settings.amqp_url
        )
        prefix = ctx.settings.topology_prefix
        check_not_ours(cluster, prefix, {"spec.exchangeName": sink.spec.exchange_name})
    except ClusterNotReady as e:
        _forget(ctx, sink)
        sink.status.address = None
        sink.status.set_ready(False, e.reason, e.message)
        return
    client = ctx.bridge_clients.acquire(cluster, key)
    deadline = time.monotonic() + CONNECT_WAIT
    while not client.connected:
        if time.monotonic() > deadline:
            ctx.bridge_targets.pop(key, None)
            raise ConnectionError(f"RabbitMQ at {cluster.display} not reachable yet")
        await asyncio.sleep(0.05)
    exchange = sink.spec.exchange_name
    missing = await _missing_exchange(client.connection, exchange)  # type: ignore[arg-type]
    if missing is not None:
        ctx.bridge_targets.pop(key, None)
        sink.status.address = None
        sink.status.set_ready(
            False,
            "ExchangeNotFound",
            f"exchange {exchange!r} does not exist on {cluster.display} ({missing}); "
            "rabbitmesh does not declare it",
        )
        return
    ctx.bridge_targets[key] = Target(
        exchange,
        is_broker=False,
        publisher=client,
        routing_key=routing_key(sink.spec.routing_key),
        structured=sink.spec.content_mode == "structured",
        unroutable_ok=False,
    )
    url = address_url(ctx.settings.base_url, KIND, sink.namespace, sink.name)
    sink.status.address = Address(url=url)
    extra = sink.status.model_extra
    assert extra is not None
    extra["rabbitmq"] = cluster.display  # the password is never shown
    sink.status.set_ready(True)


async def _missing_exchange(conn: aio_pika.abc.AbstractConnection, name: str) -> str | None:
    """None when `name` exists; else RabbitMQ's answer. A throwaway channel: a passive
    declare of a missing exchange closes it."""
    if name.startswith("amq.") or name == "":
        return None
    channel = await conn.channel()
    try:
        await channel.declare_exchange(name, passive=True)
        return None
    except aio_pika.exceptions.ChannelClosed as e:
        return str(e)
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


def _forget(ctx: Context, sink: RabbitmqSink) -> None:
    ctx.bridge_targets.pop(sink.key, None)
    ctx.bridge_clients.release_all(sink.key)


async def finalize(ctx: Context, sink: RabbitmqSink) -> None:
    _forget(ctx, sink)
