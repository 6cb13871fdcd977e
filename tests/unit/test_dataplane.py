"""The broker's data-plane rules (rabbitmesh/dataplane.py) and the hosted-kinds table
(rabbitmesh/hosted.py), without RabbitMQ: a publisher that records what it was given."""

from __future__ import annotations

from typing import Any

import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.cli.send import PATHS
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent, decode_amqp
from rabbitmesh.dataplane import (
    ARRIVAL_TIME,
    DEFAULT_TTL,
    TTL,
    ExchangeReplier,
    Target,
    stamp_arrival,
    stamp_broker_ingress,
)
from rabbitmesh.hosted import HOSTED_KINDS, hosted_kind
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.store.autocreate import ROUTE_KINDS


class Recorder:
    """A Publisher that keeps each publish (exchange, routing key, decoded event)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, CloudEvent]] = []

    async def publish(self, exchange: str, routing_key: str, message: Any, **_: bool) -> bool:
        headers = dict(message.properties.headers or {})
        event = decode_amqp(headers, message.body, message.properties.content_type)
        self.published.append((exchange, routing_key, event))
        return True


def event(**attrs: Any) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": "1", "source": "s", "type": "t", **attrs})


def test_ingress_steps_the_ttl_down_and_stamps_arrival() -> None:
    fresh = event()
    stamp_broker_ingress(fresh)
    assert fresh.attributes[TTL] == DEFAULT_TTL and ARRIVAL_TIME in fresh.attributes
    seen = event(**{TTL: "5"})
    stamp_broker_ingress(seen)
    assert seen.attributes[TTL] == 4


@pytest.mark.parametrize("raw", ["1", 1, "0", "1_0", "x", "3000000000", -2])
def test_ingress_refuses_an_exhausted_or_unreadable_ttl(raw: object) -> None:
    with pytest.raises(InvalidEvent, match=TTL):
        stamp_broker_ingress(event(**{TTL: raw}))


def test_arrival_time_is_kept_when_present() -> None:
    e = event(**{ARRIVAL_TIME: "2024-01-01T00:00:00Z"})
    stamp_arrival(e)
    assert e.attributes[ARRIVAL_TIME] == "2024-01-01T00:00:00Z"
    bare = event()
    stamp_arrival(bare)
    assert bare.attributes[ARRIVAL_TIME].endswith("Z")


async def test_trigger_reply_takes_the_originals_ttl_one_lower() -> None:
    pub = Recorder()
    replier = ExchangeReplier(pub, Target("ex", is_broker=True), "t", carry_ttl=True)
    # The reply's own TTL (a subscriber copying attributes) does not count: the original's does.
    await replier(event(**{TTL: 4}), event(type="reply", **{TTL: "200"}))
    ((exchange, key, published),) = pub.published
    assert (exchange, key) == ("ex", "reply")
    assert published.attributes[TTL] == 3 and ARRIVAL_TIME in published.attributes


async def test_trigger_reply_of_an_event_without_ttl_counts_from_the_default() -> None:
    pub = Recorder()
    replier = ExchangeReplier(pub, Target("ex", is_broker=True), "t", carry_ttl=True)
    await replier(event(), event(type="reply"))
    assert pub.published[0][2].attributes[TTL] == DEFAULT_TTL - 1


async def test_a_reply_loop_ends_when_the_ttl_runs_out() -> None:
    pub = Recorder()
    replier = ExchangeReplier(pub, Target("ex", is_broker=True), "t", carry_ttl=True)
    await replier(event(**{TTL: 1}), event(type="reply"))
    assert pub.published == []


async def test_subscription_reply_into_a_broker_uses_its_own_ttl() -> None:
    pub = Recorder()
    replier = ExchangeReplier(pub, Target("ex", is_broker=True), "s")
    await replier(event(**{TTL: 4}), event(type="reply", **{TTL: "9"}))
    assert pub.published[0][2].attributes[TTL] == 8


async def test_channel_reply_is_not_stamped() -> None:
    pub = Recorder()
    replier = ExchangeReplier(pub, Target("ex", is_broker=False), "s")
    await replier(event(**{TTL: 4}), event(type="reply", **{TTL: "1"}))
    published = pub.published[0][2]
    assert published.attributes[TTL] == "1" and ARRIVAL_TIME not in published.attributes


async def test_no_reply_into_a_deleted_destination() -> None:
    pub = Recorder()
    replier = ExchangeReplier(pub, Target("ex", is_broker=True), "t", exists=lambda: False)
    await replier(event(), event(type="reply"))
    assert pub.published == []


def test_every_hosted_kind_has_its_path_exchange_and_cli_prefix() -> None:
    names = Names("rm")
    assert [k.kind for k in HOSTED_KINDS][-1] == "Broker"  # its path catches the others'
    for row in HOSTED_KINDS:
        assert PATHS[row.kind.lower()] == row.path
        assert address_url("http://h", row.kind, "ns", "x") == "http://h" + row.path.format(
            namespace="ns", name="x"
        )
        target = row.target(names, "ns", "x")
        if row.exchange is None:  # a RabbitmqSink: its reconciler knows its exchange
            assert target is None and row.kind == "RabbitmqSink"
        else:
            assert target is not None and target.is_broker == (row.kind == "Broker")
    assert hosted_kind("InMemoryChannel") is hosted_kind("Channel")
    assert hosted_kind("Service") is None
    assert set(ROUTE_KINDS.values()) == {"Broker", "Channel"}
