"""Backoff maths, retryable codes, Retry-After parsing and delivery inheritance."""

from __future__ import annotations

import email.utils

import pytest

from rabbitmesh.dispatch.policy import (
    DeliveryPolicy,
    backoff_seconds,
    is_retryable,
    merge_delivery,
    parse_retry_after,
)
from rabbitmesh.durations import parse_duration
from rabbitmesh.resources.duck import DeliverySpec


@pytest.mark.parametrize(
    ("policy", "n", "want"),
    [
        ("linear", 1, 0.2),
        ("linear", 2, 0.4),
        ("linear", 5, 1.0),
        ("exponential", 1, 0.2),
        ("exponential", 2, 0.4),
        ("exponential", 3, 0.8),
        ("exponential", 10, 102.4),
    ],
)
def test_backoff_formulas(policy, n, want):
    assert backoff_seconds(policy, 0.2, n) == pytest.approx(want)


@pytest.mark.parametrize("code", [0, 404, 408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable(code):
    assert is_retryable(code)


@pytest.mark.parametrize("code", [400, 401, 403, 405, 410, 413, 415, 422, 499])
def test_not_retryable(code):
    assert not is_retryable(code)


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(10, usegmt=True), now=100) == 0


def policy(**kw) -> DeliveryPolicy:
    base = dict(
        retry=3,
        backoff_policy="exponential",
        backoff_delay=0.1,
        timeout=None,
        retry_after_max=None,
        dead_letter_url=None,
        format="binary",
    )
    base.update(kw)
    return DeliveryPolicy(**base)


def test_retry_after_bounded_by_retry_after_max():
    p = policy(retry_after_max=2.0)
    assert p.delay_before_retry(1, 429, 1.5) == 1.5
    assert p.delay_before_retry(1, 503, 60) == 2.0
    assert p.delay_before_retry(1, 500, 60) == pytest.approx(0.1)  # only 429/503
    assert p.delay_before_retry(3, 429, 0.01) == pytest.approx(0.4)  # backoff is larger
    assert policy().delay_before_retry(1, 429, 60) == pytest.approx(0.1)  # not enabled


def test_retries_left_and_unbounded():
    assert policy(retry=2).retries_left(1) and not policy(retry=2).retries_left(2)
    assert policy(retry=None).retries_left(10**6)
    assert policy(retry=None, max_backoff=5).delay_before_retry(30, 500, None) == 5


def test_merge_delivery_field_by_field():
    trigger = DeliverySpec(retry=1)
    broker = DeliverySpec(retry=5, backoffDelay="PT1S", deadLetterSink={"uri": "http://dls/"})
    merged = merge_delivery(trigger, broker)
    assert merged.retry == 1
    assert merged.backoff_delay == "PT1S"
    assert merged.dead_letter_sink.uri == "http://dls/"
    assert merge_delivery(None, None) == DeliverySpec()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT0.2S", 0.2),
        ("PT1M", 60),
        ("PT1H2M3.5S", 3723.5),
        ("P1D", 86400),
        ("PT0,5S", 0.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "1s", "P1Y", "P1M", "PT-1S", "PTS"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_duration(text)
