"""ISO-8601 durations as Knative's DeliverySpec uses them (`PT0.2S`, `PT1M`, `P1DT2H`)."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+(?:[.,]\d+)?)W)?(?:(?P<days>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:[.,]\d+)?)H)?(?:(?P<minutes>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse an ISO-8601 duration without years or months (their length is ambiguous).

    Raises ValueError with a message that shows the expected form.
    """
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not an ISO-8601 duration such as PT0.2S, PT10S or PT1M")
    parts = {k: float(v.replace(",", ".")) for k, v in m.groupdict().items() if v is not None}
    return timedelta(**parts)


_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> timedelta:
    """A Go duration (`1s`, `500ms`, `1m30s`, `1.5h`), as Knative's sample programs take.

    Raises ValueError with the accepted forms.
    """
    s = text.strip()
    pos, total = 0, 0.0
    if s == "0":
        return timedelta(0)
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration such as 1s, 500ms, 1m30s or 2h")
    return timedelta(seconds=total)
