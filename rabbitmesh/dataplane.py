"""The broker's data-plane rules, in one place: TTL, arrival time, stamping, replies.

Used by the ingress (an event entering over HTTP), the queue workers (an event leaving for a
subscriber) and the flows' and triggers' repliers (a reply entering a hosted resource), so an
event is treated the same whichever way it comes in. Below all three in the layer order
(docs/architecture.md, "Layers"): it imports only the event model, the AMQP message codec and
the routing-key rule.

The TTL rule, as Knative's broker data plane applies it (its broker ingress and filter:
`knative.dev/eventing/pkg/broker`, `GetTTL`/`SetTTL`; docs/delivery.md, "Replies"):

- an event entering a broker carries `knativebrokerttl`, a CloudEvents Integer (read
  strictly: digits only, signed 32-bit): it enters with one less; without one it enters with
  DEFAULT_TTL (255); one that would enter with 0 or less is refused (the ingress answers 400,
  a reply is dropped with a warning): a reply loop ends there;
- a Trigger's subscriber never sees the attribute (the worker drops it); its reply carries the
  TTL of the event it answers (Knative's filter re-attaches it), and then enters the broker
  like any event, so each pass through the broker costs one;
- a channel leaves the attribute alone: a Subscription's reply into a broker carries
  whatever TTL the reply has.

`knativearrivaltime` is the time the event entered the broker (or, for an event that did not
come through an ingress — a channel's, one published straight to the exchange — when it was
first taken from its queue for delivery).

Where a reply goes is made durable before the original event is acked:
- into an exchange rabbitmesh hosts (a broker, a channel, a flow's next channel):
  `ExchangeReplier` publishes it there with a publisher confirm, stamped as its ingress
  would stamp it;
- to any other URL: `QueueReplier` parks it, confirmed, in the subscription's own reply
  queue, whose worker POSTs it with the subscription's retries, backoff and dead-letter sink
  (as Knative's channel dispatcher retries a reply). A POST inline would have to redeliver
  the original, and call the subscriber again, each time the reply destination hiccups.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rabbitmesh.amqp.messages import to_message
from rabbitmesh.amqp.publisher import IngressPublisher, Publisher
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent
from rabbitmesh.filters.bindings import routing_key_for_type
from rabbitmesh.timestamps import now_rfc3339

log = logging.getLogger("rabbitmesh.replies")

TTL = "knativebrokerttl"
ARRIVAL_TIME = "knativearrivaltime"
#: The TTL an event without one enters a broker with.
DEFAULT_TTL = 255

_TTL_TEXT = re.compile(r"[0-9]{1,10}")
_INT32_MAX = 2**31 - 1


def ttl_value(raw: object) -> int:
    """knativebrokerttl as a CloudEvents Integer (signed 32-bit), strictly: no "1_0", "٣"."""
    if type(raw) is int:
        value = raw
    elif isinstance(raw, str) and _TTL_TEXT.fullmatch(raw):
        value = int(raw)
    else:
        raise InvalidEvent(f"extension '{TTL}' is not an integer: {raw!r}")
    if not 0 <= value <= _INT32_MAX:
        raise InvalidEvent(f"extension '{TTL}' is out of range: {raw!r}")
    return value


def stamp_broker_ingress(event: CloudEvent) -> None:
    """The event enters a broker: step knativebrokerttl down (DEFAULT_TTL when absent) and
    add knativearrivaltime. Raises InvalidEvent when the TTL would reach 0 or is no integer."""
    attrs = event.attributes
    raw = attrs.get(TTL)
    if raw is None:
        ttl = DEFAULT_TTL
    else:
        ttl = ttl_value(raw) - 1
        if ttl <= 0:
            raise InvalidEvent(
                f"extension '{TTL}' is {raw}: the event has looped through brokers "
                "too often and is rejected"
            )
    attrs[TTL] = ttl
    attrs[ARRIVAL_TIME] = now_rfc3339()


def carry_ttl(original: CloudEvent, reply: CloudEvent) -> None:
    """A Trigger's reply takes the TTL of the event it answers (its subscriber never saw it).

    An event published straight to the broker's exchange may have none: it counts as having
    entered with DEFAULT_TTL, as it would have through the ingress."""
    reply.attributes[TTL] = original.attributes.get(TTL, DEFAULT_TTL)


def stamp_arrival(event: CloudEvent) -> None:
    """Before delivery: an event that came through no broker ingress gets its arrival time."""
    if ARRIVAL_TIME not in event.attributes:
        event.attributes[ARRIVAL_TIME] = now_rfc3339()


@dataclass(frozen=True)
class Target:
    """Where an event for a hosted resource is published: an exchange, and whether it enters
    a broker there (and so is stamped: TTL, arrival time)."""

    exchange: str
    is_broker: bool
    #: Bearer tokens this ingress accepts (rabbitmesh/ingress/auth.py); None: open to all.
    tokens: tuple[bytes, ...] | None = None
    #: A client of its own (a RabbitmqSink's RabbitMQ: rabbitmesh/amqp/remote.py); None: the
    #: shared publisher.
    publisher: IngressPublisher | None = None
    #: The routing key of an event (raises InvalidEvent); None: the event's type.
    routing_key: Callable[[CloudEvent], str] | None = None
    #: Publish in the JSON format (application/cloudevents+json) instead of the AMQP binding.
    structured: bool = False
    #: A message no queue takes is dropped as Knative's broker drops it (True), or refused
    #: with 503 (a RabbitmqSink: its owner's exchange should have a queue for it).
    unroutable_ok: bool = True
    #: Sender authorization (rabbitmesh/auth/gate.py `Gate.admit`): request -> the response
    #: refusing it, or the `Admission` saying what it may send. Typed loosely here: the
    #: data plane sits below HTTP and auth in the layer order.
    authorize: Callable[[Any], Awaitable[Any]] | None = None


class ExchangeReplier:
    """Publishes each reply into a hosted exchange, as if it had come through its ingress.

    Errors propagate to the worker: PublishFailed requeues the original; UnpublishableMessage
    is a failed delivery of the original (retried, then dead-lettered)."""

    def __init__(
        self,
        publisher: Publisher,
        target: Target,
        label: str,
        *,
        carry_ttl: bool = False,
        exists: Callable[[], bool] | None = None,
    ) -> None:
        self.publisher = publisher
        self.target = target
        self.label = label
        #: a Trigger's replier: the reply takes the original's TTL (see the module docstring)
        self.carry_ttl = carry_ttl
        #: whether the target still exists: publishing to a deleted exchange would close the
        #: shared confirm channel
        self.exists = exists

    async def __call__(self, original: CloudEvent, reply: CloudEvent) -> None:
        if self.exists is not None and not self.exists():
            self._dropped(original, reply, "its destination was deleted")
            return
        reply.trace = reply.trace or original.trace  # the reply continues the event's trace
        if self.target.is_broker:
            if self.carry_ttl:
                carry_ttl(original, reply)
            try:
                stamp_broker_ingress(reply)
            except InvalidEvent as e:  # knativebrokerttl exhausted: a reply loop ends here
                self._dropped(original, reply, str(e))
                return
        await self.publisher.publish(
            self.target.exchange, routing_key_for_type(reply.type), to_message(reply)
        )

    def _dropped(self, original: CloudEvent, reply: CloudEvent, why: str) -> None:
        log.warning(
            "reply %s to event %s via %s dropped: %s", reply.id, original.id, self.label, why
        )


class QueueReplier:
    """Parks each reply in a reply queue for its own worker to deliver over HTTP."""

    def __init__(self, publisher: Publisher, queue: str) -> None:
        self.publisher = publisher
        self.queue = queue

    async def __call__(self, original: CloudEvent, reply: CloudEvent) -> None:
        reply.trace = reply.trace or original.trace
        # mandatory: should the queue be gone (a reconfiguration), the publish fails and the
        # original is redelivered rather than the reply silently dropped.
        await self.publisher.publish("", self.queue, to_message(reply), mandatory=True)
