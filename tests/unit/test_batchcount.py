"""The batch counter (rabbitmesh/ingress/batchcount.py): it stops reading an over-long batch
at a prefix that the decoder refuses as it would the whole body, and stays out of the way of
everything else."""

from __future__ import annotations

import orjson
import pytest

from rabbitmesh.cloudevents import InvalidEvent, OverLimit
from rabbitmesh.cloudevents.jsonformat import batch_items, cut_batch_too_long, too_deep
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


def stopped(body: bytes, max_events: int, step: int = 9000) -> tuple[bytes, BatchCounter]:
    counter = BatchCounter(max_events)
    try:
        for i in range(0, len(body), step):
            counter.feed(body[i : i + step])
    except BatchTooLong as e:
        return e.prefix, counter
    raise AssertionError("the counter did not stop")


def item_parser_answer(prefix: bytes, max_events: int) -> str:
    try:
        batch_items(prefix, max_events, 64)
    except OverLimit:
        return "413"
    except InvalidEvent:
        return "400"
    return "accepted"


@pytest.mark.parametrize("step", [1, 1000, 65536])
def test_the_quick_check_refuses_a_plain_over_long_batch(step):
    """The usual over-long batch (the attack of issue 11: 70,000 tiny events) is decided by
    one orjson parse of its prefix, with the answer the item-by-item decode gives."""
    one = {"specversion": "1.0", "id": "", "type": "t", "source": "s"}
    body = orjson.dumps([{**one, "id": str(i)} for i in range(5000)])
    prefix, counter = stopped(body, 1000, step)
    assert counter.max_nesting <= 64
    assert cut_batch_too_long(prefix, 1000, None)
    assert cut_batch_too_long(prefix, 1000, 64)
    assert item_parser_answer(prefix, 1000) == "413"


@pytest.mark.parametrize(
    "item",
    [
        b"{oops}",
        b"[1e400]",
        b"NaN",
        b'"\\ud800"',  # lone surrogate: the item parser takes it, orjson does not
        b"123456789012345678901234567890",
        b'"\xff"',  # not UTF-8
        b"[" * 64 + b"]" * 64,  # 65 levels with the array
        b"[" * 63 + b"]" * 63,  # 64: allowed
        b"[" * 2000 + b"]" * 2000,  # deeper than orjson parses
        b'{"a": "\\"], [{"}',
    ],
)
def test_the_quick_check_never_refuses_what_the_item_parser_answers_otherwise(item):
    """Whatever the quick check says 413 for, the item-by-item decode refuses with 413 too;
    where it cannot tell (False), the handler falls back to that decode."""
    body = b"[" + b"{}," * 3 + item + b"," + b"{}," * 3000 + b"{}]"
    counter = BatchCounter(1000)
    try:
        for i in range(0, len(body), 9000):
            counter.feed(body[i : i + 9000])
    except BatchTooLong as e:
        prefix = e.prefix
    else:
        return  # too bracket-heavy to count: read whole and decoded as before
    depth = None if counter.max_nesting <= 64 else 64
    if cut_batch_too_long(prefix, 1000, depth):
        assert item_parser_answer(prefix, 1000) == "413"
    if item_parser_answer(prefix, 1000) == "400":
        assert not cut_batch_too_long(prefix, 1000, depth)


@pytest.mark.parametrize(
    "item",
    [
        {},
        [[1], {}],
        {"a": [{"b": [{"c": [1, 2]}]}]},
        {"s": "[[[[[[[[[[", "t": "]]]]]"},
        [[[[[[[[[[[]]]]]]]]]]],
    ],
)
def test_the_counters_nesting_bound_is_never_below_the_real_nesting(item):
    body = orjson.dumps([item, TRICKY] * 1500)
    _, counter = stopped(body, 1000)
    assert not too_deep(orjson.loads(body)[:1002], counter.max_nesting)
    assert counter.max_nesting <= 64  # and it is tight enough to spare the depth walk
