"""rabbitmesh.dev/v1alpha1 Replay, and a Broker's archive annotations (docs/replay.md).

metadata.annotations:
  rabbitmesh.dev/archive-retention: "P7D"       # ISO 8601; the archive exists while set
  rabbitmesh.dev/archive-max-bytes: "1000000000" # optional

kind: Replay
spec:
  broker: NAME
  from: RFC 3339
  to: RFC 3339             # optional; default: when the Replay was created
  filter: CESQL            # optional
  destination:
    trigger: NAME          # a Trigger of that broker ...
    # ... or a sink: ref / uri, as any Knative destination
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator, model_validator

from rabbitmesh.durations import parse_duration
from rabbitmesh.filters import FilterError, compile_trigger_filter
from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.duck import KReference
from rabbitmesh.resources.registry import register

ARCHIVE_RETENTION_ANNOTATION = "rabbitmesh.dev/archive-retention"
ARCHIVE_MAX_BYTES_ANNOTATION = "rabbitmesh.dev/archive-max-bytes"
#: The extension every replayed event carries: the Replay's name.
REPLAY_EXTENSION = "rabbitmeshreplay"


def archive_limits(res: Resource) -> tuple[int, int | None] | None:
    """(retention seconds, max bytes or None) of a Broker's archive; None: no archive.
    Raises FieldError naming the annotation."""
    notes = res.metadata.annotations
    raw = notes.get(ARCHIVE_RETENTION_ANNOTATION)
    max_raw = notes.get(ARCHIVE_MAX_BYTES_ANNOTATION)
    if raw is None:
        if max_raw is not None:
            raise FieldError(
                f"metadata.annotations[{ARCHIVE_MAX_BYTES_ANNOTATION}]",
                f"needs {ARCHIVE_RETENTION_ANNOTATION} too",
            )
        return None
    where = f"metadata.annotations[{ARCHIVE_RETENTION_ANNOTATION}]"
    try:
        seconds = int(parse_duration(raw).total_seconds())
    except ValueError as e:
        raise FieldError(where, str(e)) from None
    if seconds < 1:
        raise FieldError(where, "must be at least PT1S")
    max_bytes = None
    if max_raw is not None:
        if not max_raw.strip().isdigit() or int(max_raw) < 1:
            raise FieldError(
                f"metadata.annotations[{ARCHIVE_MAX_BYTES_ANNOTATION}]",
                f"must be a whole number of bytes, got {max_raw[:40]!r}",
            )
        max_bytes = int(max_raw)
    return seconds, max_bytes


class ReplayDestination(Model):
    """A Trigger of the Replay's broker, or a sink (ref/uri) like any Knative destination."""

    trigger: str | None = None
    ref: KReference | None = None
    uri: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ReplayDestination:
        sink = self.ref is not None or bool(self.uri)
        if (self.trigger is not None) == sink:
            raise ValueError("give either trigger or a sink (ref or uri)")
        return self


class ReplaySpec(Model):
    broker: str
    from_: datetime = Field(alias="from")
    to: datetime | None = None
    filter: str | None = None
    destination: ReplayDestination

    @field_validator("from_", "to")
    @classmethod
    def _zone(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must be RFC 3339 with a time zone (Z or +hh:mm)")
        return v


@register("rabbitmesh.dev", ("v1alpha1",), "replays")
class Replay(Resource):
    spec: ReplaySpec

    def check(self) -> None:
        if self.spec.to is not None and self.spec.to < self.spec.from_:
            raise FieldError("spec.to", "must not be before spec.from")
        if self.spec.filter is not None:
            try:
                compile_trigger_filter(None, [{"cesql": self.spec.filter}])
            except FilterError as e:
                raise FieldError("spec.filter", e.message) from None
