"""The kinds rabbitmesh hosts itself: one row each, the only place a hosted kind is listed.

A row says where the kind's ingress listens (`path`, under RABBITMESH_BASE_URL), which
exchange that ingress publishes to (`exchange`, the resolver from a resource's namespace and
name to its exchange), the exchange's type, and whether an event entering it enters a broker
(stamped: rabbitmesh/dataplane.py). Everything else is derived from this table: the ingress
routes (ingress/handlers.py), addressable URLs (reconciler/resolve.py), where replies to a
hosted resource are published (reconciler/subscription.py), the EventType auto-creation
middleware (store/autocreate.py) and `rabbitmesh send --to` (cli/send.py).
Adding a hosted kind: a row here (docs/architecture.md, "Adding a kind").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aio_pika import ExchangeType

from rabbitmesh.amqp.names import Names
from rabbitmesh.dataplane import Target
from rabbitmesh.resources.flows import Parallel, Sequence
from rabbitmesh.resources.registry import canonical_kind


@dataclass(frozen=True)
class HostedKind:
    kind: str  # canonical kind name (aliases such as InMemoryChannel resolve to it)
    #: The ingress path, with `{namespace}` and `{name}`.
    path: str
    #: (names, namespace, name) -> the exchange the ingress (and replies) publish to; None
    #: for a kind whose exchange is in its spec (a RabbitmqSink's, maybe on another
    #: RabbitMQ): events reach it through its ingress only, replies included.
    exchange: Callable[[Names, str, str], str] | None
    exchange_type: ExchangeType | None
    #: An event entering it enters a broker: knativebrokerttl, knativearrivaltime.
    broker: bool = False
    #: EventTypes are auto-created from what its ingress accepts (store/autocreate.py).
    auto_event_types: bool = False

    @property
    def cli_prefix(self) -> str:
        """`rabbitmesh send --to PREFIX:NAME`."""
        return self.kind.lower()

    def target(self, names: Names, namespace: str, name: str) -> Target | None:
        if self.exchange is None:
            return None
        return Target(self.exchange(names, namespace, name), is_broker=self.broker)

    def url(self, base_url: str, namespace: str, name: str) -> str:
        return base_url + self.path.format(namespace=namespace, name=name)


def _sequence_exchange(names: Names, namespace: str, name: str) -> str:
    return names.flow_exchange("sequence", namespace, Sequence.channel_name(name, 0))


def _parallel_exchange(names: Names, namespace: str, name: str) -> str:
    return names.flow_exchange("parallel", namespace, Parallel.ingress_channel_name(name))


#: In route order: the broker's `/{namespace}/{name}` catches every two-segment path, so it
#: comes last.
HOSTED_KINDS: tuple[HostedKind, ...] = (
    HostedKind(
        "Channel",
        "/channels/{namespace}/{name}",
        Names.channel_exchange,
        ExchangeType.FANOUT,
        auto_event_types=True,
    ),
    HostedKind(
        "Sequence", "/sequences/{namespace}/{name}", _sequence_exchange, ExchangeType.FANOUT
    ),
    HostedKind(
        "Parallel", "/parallels/{namespace}/{name}", _parallel_exchange, ExchangeType.FANOUT
    ),
    # Its ingress target comes from its reconciler (rabbitmesh/reconciler/rabbitmqsink.py).
    HostedKind("RabbitmqSink", "/rabbitmqsinks/{namespace}/{name}", None, None),
    HostedKind(
        "Broker",
        "/{namespace}/{name}",
        Names.broker_exchange,
        ExchangeType.TOPIC,
        broker=True,
        auto_event_types=True,
    ),
)

_BY_KIND = {k.kind: k for k in HOSTED_KINDS}


def hosted_kind(kind: str) -> HostedKind | None:
    """The row of a hosted kind (or of an alias of one: InMemoryChannel), else None."""
    return _BY_KIND.get(canonical_kind(kind))


def hosted_target(names: Names, kind: str, namespace: str, name: str) -> Target | None:
    """Where events for a hosted resource are published; None for a kind rabbitmesh does
    not host."""
    row = hosted_kind(kind)
    return None if row is None else row.target(names, namespace, name)
