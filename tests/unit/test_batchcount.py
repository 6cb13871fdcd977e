"""The batch counter (rabbitmesh/ingress/batchcount.py): it stops reading an over-long batch
at a prefix that the decoder refuses as it would the whole body, and stays out of the way of
everything else."""

from __future__ import annotations

import orjson
import pytest

from rabbitmesh.cloudevents import InvalidEvent, OverLimit
from rabbitmesh.cloudevents.jsonformat import batch_items
from rabbitmesh.ingress.batchcount import BatchCounter, BatchTooLong

TRICKY = {"specversion": "1.0", "id": 'a,]}[{"\\', "type": "t", "source": "s", "data": [[1], {}]}


def feed(body: bytes, max_events: int, step: int) -> bytes | None:
    """The prefix the counter stopped at, None when it let the whole body through."""
    counter = BatchCounter(max_events)
    try:
        for i in range(0, len(body), step):
            counter.feed(body[i : i + step])
    except BatchTooLong as e:
        assert counter.stopped
        return e.prefix
    return None


@pytest.mark.parametrize("step", [1, 7, 1000, 65536, 10**7])
def test_an_over_long_batch_stops_at_a_prefix_refused_as_the_whole(step):
    body = orjson.dumps([TRICKY] * 3000)
    prefix = feed(body, 1000, step)
    assert prefix is not None and len(prefix) < len(body)
    with pytest.raises(OverLimit, match="limit of 1000 events"):
        batch_items(prefix, 1000, 64)


@pytest.mark.parametrize("n", [0, 1, 1000, 1001])
def test_batches_up_to_one_over_the_limit_are_read_whole(n):
    """1,001 events are refused by the decoder; the counter stops only at a separator after
    item 1,001, so it never cuts a body the decoder needs whole."""
    assert feed(orjson.dumps([TRICKY] * n), 1000, 9000) is None


def test_a_broken_item_before_the_limit_still_gets_its_400():
    body = b"[" + b"{}," * 5 + b"{oops}," + b"{}," * 3000 + b"{}]"
    prefix = feed(body, 1000, 9000)
    assert prefix is not None
    with pytest.raises(InvalidEvent, match="malformed JSON") as refused:
        batch_items(prefix, 1000, 64)
    assert not isinstance(refused.value, OverLimit)


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"items": [{}] * 5000}),  # not an array: the decoder says so
        orjson.dumps([[[[]] * 10] * 10] * 3000),  # bracket-heavy: too costly to follow
    ],
)
def test_what_it_cannot_follow_cheaply_is_left_to_the_decoder(body):
    assert feed(body, 1000, 9000) is None
