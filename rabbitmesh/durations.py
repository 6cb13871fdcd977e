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
