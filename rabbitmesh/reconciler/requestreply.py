"""RequestReply -> a headers exchange bound to its broker's exchange that passes on only the
events carrying the reply attribute, and on each ingress replica its own reply queue there
(rabbitmesh/ingress/requestreply.py)."""

from __future__ import annotations

import aio_pika

from rabbitmesh.ingress.requestreply import RequestDelivery
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.eventing_v1alpha1 import RequestReply

KIND = "RequestReply"
ORDER = 15  # after brokers (10)


async def reconcile(ctx: Context, rr: RequestReply) -> None:
    ns, name = rr.namespace, rr.name
    rr.status.address = Address(url=address_url(ctx.settings.base_url, KIND, ns, name))
    extra = rr.status.model_extra
    assert extra is not None
    broker = ctx.get("Broker", ns, rr.spec.broker_ref.name)
    if not isinstance(broker, Broker) or broker.status.ready != "True":
        rr.status.set_ready(
            False,
            "BrokerNotReady",
            f"Broker {ns}/{rr.spec.broker_ref.name} does not exist or is not Ready",
        )
        return
    exchange = ctx.names.requestreply_exchange(ns, name)
    await ctx.topology.declare_exchange(exchange, aio_pika.ExchangeType.HEADERS)
    # Re-bound every time: a broker deleted and made again lost the binding.
    headers_exchange = await ctx.topology.lane(exchange).get_exchange(exchange, ensure=False)
    await headers_exchange.bind(ctx.names.broker_exchange(ns, broker.name), "#")
    delivery = request_delivery(ctx, rr)
    if ctx.requestreplies is not None:
        await ctx.requestreplies.listen(rr)
        ctx.requestreplies.set_delivery(rr, delivery)
    extra["brokerAddress"] = broker.status.address.url if broker.status.address else None
    rr.status.set_ready(True, "RequestReplyReady", "")


def request_delivery(ctx: Context, rr: RequestReply) -> RequestDelivery | None:
    """`spec.delivery` for the publish of each request into the broker (docs/requestreply.md):
    the configured defaults fill what it leaves out, as for a Trigger. None: none given."""
    spec = rr.spec.delivery
    extra = rr.status.model_extra
    assert extra is not None
    extra.pop("deadLetterSinkUri", None)
    if spec is None:
        return None
    policy = ctx.policy(spec, rr.namespace)
    dls = spec.dead_letter_sink
    auth = ctx.sender_auth(rr, dls, rr.namespace) if dls is not None else None
    if policy.dead_letter_url:
        extra["deadLetterSinkUri"] = policy.dead_letter_url
    return RequestDelivery(policy, auth)


async def finalize(ctx: Context, rr: RequestReply) -> None:
    if ctx.requestreplies is not None:
        await ctx.requestreplies.forget(rr.namespace, rr.name)
    await ctx.topology.delete_exchange(ctx.names.requestreply_exchange(rr.namespace, rr.name))
