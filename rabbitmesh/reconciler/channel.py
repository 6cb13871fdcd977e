"""Channel (and InMemoryChannel, the same kind here) -> a durable fanout exchange.

Whatever `spec.channelTemplate` names (InMemoryChannel, KafkaChannel, ...), the channel is a
RabbitMQ exchange; the template is recorded in `status.channel` as Knative shows the backing
channel.
"""

from __future__ import annotations

import aio_pika

from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.messaging import Channel

KIND = "Channel"
ORDER = 10


async def reconcile(ctx: Context, channel: Channel) -> None:
    ns, name = channel.namespace, channel.name
    await ctx.topology.declare_exchange(
        ctx.names.channel_exchange(ns, name), aio_pika.ExchangeType.FANOUT
    )
    channel.status.address = Address(url=address_url(ctx.settings.base_url, KIND, ns, name))
    extra = channel.status.model_extra
    assert extra is not None
    extra["channel"] = channel.template.reference(name, ns)
    delivery = channel.spec.delivery or channel.template.delivery
    if delivery is not None and delivery.dead_letter_sink is not None:
        extra["deadLetterSinkUri"] = ctx.resolve(delivery.dead_letter_sink, ns)
    else:
        extra.pop("deadLetterSinkUri", None)
    channel.status.set_ready(True, "ChannelReady", "")


async def finalize(ctx: Context, channel: Channel) -> None:
    await ctx.topology.delete_exchange(ctx.names.channel_exchange(channel.namespace, channel.name))
