"""Channel (and InMemoryChannel, KafkaChannel, NatssChannel: the same kind here) -> a durable
fanout exchange.

Whatever `spec.channelTemplate` names (InMemoryChannel, KafkaChannel, ...), the channel is a
RabbitMQ exchange; the template is recorded in `status.channel` as Knative shows the backing
channel. A `Channel` that names no template gets default-ch-webhook's (rabbitmesh/config/),
whose `spec.delivery` its subscriptions inherit as in Knative.
"""

from __future__ import annotations

import aio_pika

from rabbitmesh.config.knative import channel_warnings
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.messaging import Channel, ChannelTemplate

KIND = "Channel"
ORDER = 10


def template(ctx: Context, channel: Channel) -> tuple[ChannelTemplate, str]:
    """The channel's backing kind and spec, and where it came from."""
    if channel.spec.channel_template is not None:
        return channel.spec.channel_template, "spec.channelTemplate"
    if channel.kind != "Channel":
        return channel.template, "kind"
    default = ctx.effective().channel_template(channel.namespace)
    return default.value, default.source


async def reconcile(ctx: Context, channel: Channel) -> None:
    ns, name = channel.namespace, channel.name
    await ctx.topology.declare_exchange(
        ctx.names.channel_exchange(ns, name), aio_pika.ExchangeType.FANOUT
    )
    channel.status.address = Address(url=address_url(ctx.settings.base_url, KIND, ns, name))
    extra = channel.status.model_extra
    assert extra is not None
    backing, source = template(ctx, channel)
    extra["channel"] = backing.reference(name, ns)
    extra["effectiveConfig"] = {"channelTemplate": {"value": backing.kind, "source": source}}
    warnings = channel_warnings(channel)
    if warnings:
        extra["warnings"] = warnings
    else:
        extra.pop("warnings", None)
    delivery = channel.spec.delivery or backing.delivery
    if delivery is not None and delivery.dead_letter_sink is not None:
        extra["deadLetterSinkUri"] = ctx.resolve(delivery.dead_letter_sink, ns)
    else:
        extra.pop("deadLetterSinkUri", None)
    channel.status.set_ready(True, "ChannelReady", "")


async def finalize(ctx: Context, channel: Channel) -> None:
    await ctx.topology.delete_exchange(ctx.names.channel_exchange(channel.namespace, channel.name))
