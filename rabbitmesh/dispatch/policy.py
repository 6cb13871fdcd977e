"""Delivery rules as data: retries, backoff maths, timeouts and which codes are retried."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Literal

from rabbitmesh.durations import parse_duration
from rabbitmesh.resources.duck import DeliverySpec

#: 4xx codes Knative retries; every 5xx and "no response" are retried too.
RETRYABLE_4XX = frozenset({404, 408, 409, 429})


def is_retryable(status: int) -> bool:
    """status 0 means no response at all (connection error, timeout)."""
    return status == 0 or status >= 500 or status in RETRYABLE_4XX


def backoff_seconds(policy: str, delay: float, n: int) -> float:
    """Wait before retry n (n = 1, 2, ...): linear delay*n, exponential delay*2^(n-1)."""
    if policy == "linear":
        return delay * n
    # Capped exponent: a dead-letter sink is retried for ever, and 2 ** 1024 as a float
    # overflows (an exception that parked the event after ~1,000 retries); the caller's
    # max_backoff caps the delay itself.
    return delay * 2.0 ** min(n - 1, 512)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class DeliveryPolicy:
    retry: int | None  # None: retry for ever (dead-letter sink delivery)
    backoff_policy: Literal["exponential", "linear"]
    backoff_delay: float
    timeout: float | None
    retry_after_max: float | None
    dead_letter_url: str | None
    format: Literal["binary", "json"]
    max_backoff: float | None = None

    def retries_left(self, done: int) -> bool:
        return self.retry is None or done < self.retry

    def delay_before_retry(self, n: int, status: int, retry_after: float | None) -> float:
        delay = backoff_seconds(self.backoff_policy, self.backoff_delay, n)
        if self.max_backoff is not None:
            delay = min(delay, self.max_backoff)
        if self.retry_after_max is not None and status in (429, 503) and retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


def merge_delivery(*specs: DeliverySpec | None) -> DeliverySpec:
    """Field by field, the first spec that sets a field wins (trigger, then broker)."""
    merged: dict[str, object] = {}
    for spec in specs:
        if spec is None:
            continue
        for field in DeliverySpec.model_fields:
            if field not in merged and getattr(spec, field) is not None:
                merged[field] = getattr(spec, field)
    return DeliverySpec(**merged)


def seconds(iso: str | None) -> float | None:
    return None if iso is None else parse_duration(iso).total_seconds()
