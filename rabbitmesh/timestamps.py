"""RFC 3339 timestamps, the one way rabbitmesh writes them (CloudEvents `time`,
`knativearrivaltime`, the resource store's record times)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def rfc3339(when: datetime, timespec: Literal["seconds", "microseconds"] = "microseconds") -> str:
    """`when` in UTC with a `Z`; microseconds kept unless they are all zero."""
    text = when.astimezone(UTC).isoformat(timespec=timespec)
    return text.replace("+00:00", "Z").replace(".000000Z", "Z")


def now_rfc3339(timespec: Literal["seconds", "microseconds"] = "microseconds") -> str:
    return rfc3339(datetime.now(UTC), timespec)
