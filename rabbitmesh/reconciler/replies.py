"""Where a subscription's replies go, made durable before the original event is acked.

- into an exchange rabbitmesh hosts (a channel, a flow's next channel, a broker): published
  straight there with a publisher confirm; a broker gets the same stamping as its ingress;
- to any other URL: parked, confirmed, in the subscription's own reply queue, whose worker
  POSTs them with the subscription's retries, backoff and dead-letter sink (as Knative's
  channel dispatcher retries a reply). A POST inline would have to redeliver the original,
  and call the subscriber again, each time the reply destination hiccups.
Errors propagate to the worker: PublishFailed (RabbitMQ down or slow, transient) requeues
the original; UnpublishableMessage (a reply RabbitMQ could never take: over frame_max, an
attribute over 255 bytes) is a failed delivery of the original, retried then dead-lettered.
"""

from __future__ import annotations

import logging

from rabbitmesh.amqp.messages import to_message
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent
from rabbitmesh.filters.bindings import routing_key_for_type
from rabbitmesh.ingress.handlers import Target, stamp_broker_ingress
from rabbitmesh.reconciler.context import Context

log = logging.getLogger("rabbitmesh.replies")


class ExchangeReplier:
    """Publishes each reply into a hosted exchange, as if it had come through its ingress."""

    def __init__(self, ctx: Context, target: Target, label: str) -> None:
        self.ctx = ctx
        self.target = target
        self.label = label

    async def __call__(self, original: CloudEvent, reply: CloudEvent) -> None:
        reply.trace = reply.trace or original.trace  # the reply continues the event's trace
        if self.target.is_broker:
            try:
                stamp_broker_ingress(reply)
            except InvalidEvent as e:  # knativebrokerttl exhausted: a reply loop ends here
                log.warning(
                    "reply %s to event %s via %s dropped: %s", reply.id, original.id, self.label, e
                )
                return
        await self.ctx.publisher.publish(
            self.target.exchange, routing_key_for_type(reply.type), to_message(reply)
        )


class QueueReplier:
    """Parks each reply in a reply queue for its own worker to deliver over HTTP."""

    def __init__(self, ctx: Context, queue: str) -> None:
        self.ctx = ctx
        self.queue = queue

    async def __call__(self, original: CloudEvent, reply: CloudEvent) -> None:
        reply.trace = reply.trace or original.trace
        # mandatory: should the queue be gone (a reconfiguration), the publish fails and the
        # original is redelivered rather than the reply silently dropped.
        await self.ctx.publisher.publish("", self.queue, to_message(reply), mandatory=True)
