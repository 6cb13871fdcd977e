"""PingSource schedules: Knative's cron syntax on top of croniter.

A schedule is 5 fields (minute hour day-of-month month day-of-week), 6 fields whose *first*
is seconds (`*/3 * * * * *` fires every 3 seconds, as the seconds-enabled cron parsers Knative
users know), or a descriptor (`@hourly`, `@daily`, ...). croniter puts an optional seconds field
*last*, so a 6-field schedule is rotated before croniter sees it. `@every` is rejected, as
Knative rejects it. Ticks are computed in the schedule's time zone (IANA name), so "9:00 every
day" stays 9:00 across daylight-saving changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

DESCRIPTORS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


class ScheduleError(ValueError):
    """An invalid schedule or time zone; the message is one line for a FieldError, and does
    not repeat the schedule (the caller names it once)."""


#: How a schedule is written, said once in an error about its fields.
FIELDS_HINT = "5 fields (minute hour day month weekday), or 6 with a leading seconds field"


def croniter_expression(schedule: str) -> str:
    """The croniter form of a Knative schedule (seconds moved from first to last)."""
    text = schedule.strip()
    if text.startswith("@"):
        if text.startswith("@every"):
            raise ScheduleError("unsupported descriptor @every")
        if text not in DESCRIPTORS:
            known = ", ".join(sorted(DESCRIPTORS))
            raise ScheduleError(f"unknown descriptor {text!r}; one of {known}")
        return text
    fields = text.split()
    if len(fields) == 6:
        fields = [*fields[1:], fields[0]]
    elif len(fields) != 5:
        raise ScheduleError(f"{len(fields)} fields; expected {FIELDS_HINT}")
    expression = " ".join(fields)
    try:
        # One next tick too: `0 0 31 2 *` parses, but never fires.
        croniter(expression).get_next()
    except (ValueError, KeyError) as e:  # croniter's errors are ValueErrors (KeyError: names)
        # croniter repeats the expression ("[61 * * * *] is not acceptable, out of range")
        # and in its own field order: keep only what it says about it.
        why = re.sub(r"^\[[^\]]*\]", "", str(e)).replace(expression, "").strip(" :,")
        if why.startswith("failed to find next date"):
            raise ScheduleError("never fires (no such date)") from None
        if "out of range" in why:
            why = "a value is out of range"
        elif not why or why.startswith("is not acceptable"):
            why = "not a valid schedule"
        raise ScheduleError(f"{why}; expected {FIELDS_HINT}") from None
    return expression


def time_zone(name: str | None) -> tzinfo:
    """The IANA zone `name`, or the system's local zone when unset (Knative's default)."""
    if not name:
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris)"
        ) from None


@dataclass(frozen=True)
class Schedule:
    schedule: str
    timezone: str | None = None

    def __post_init__(self) -> None:
        croniter_expression(self.schedule)  # raise ScheduleError now, not at the first tick
        time_zone(self.timezone)

    def ticks_after(self, start: datetime) -> Iterator[datetime]:
        """Every tick strictly after `start` (aware), as aware datetimes in the zone."""
        local = start.astimezone(time_zone(self.timezone))
        it = croniter(croniter_expression(self.schedule), local)
        while True:
            yield it.get_next(datetime)
