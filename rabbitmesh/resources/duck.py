"""Types shared by many kinds, as Knative's `duck/v1` package: Destination and DeliverySpec."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from rabbitmesh.durations import parse_duration
from rabbitmesh.resources.base import Model


class KReference(Model):
    api_version: str | None = None
    kind: str
    name: str
    namespace: str | None = None
    group: str | None = None


class Destination(Model):
    """Where events go: a `ref` to an addressable, an absolute `uri`, or both (uri relative)."""

    ref: KReference | None = None
    uri: str | None = None
    ca_certs: str | None = Field(None, alias="CACerts")
    audience: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Destination:
        if self.ref is None and not self.uri:
            raise ValueError("a destination needs ref or uri")
        if self.ref is None and self.uri:
            parts = urlsplit(self.uri)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"uri must be an absolute http(s) URL, got {self.uri!r}")
        return self


def _check_duration(v: str | None) -> str | None:
    if v is not None:
        parse_duration(v)
    return v


class DeliverySpec(Model):
    """Knative's delivery: retries, backoff, per-attempt timeout and dead-letter sink."""

    dead_letter_sink: Destination | None = None
    retry: int | None = Field(None, ge=0, le=1000)
    backoff_policy: Literal["exponential", "linear"] | None = None
    backoff_delay: str | None = None
    timeout: str | None = None
    retry_after_max: str | None = None
    format: Literal["json", "binary"] | None = None

    _durations = field_validator("backoff_delay", "timeout", "retry_after_max")(
        lambda cls, v: _check_duration(v)
    )

    def duration(
        self, name: Literal["backoff_delay", "timeout", "retry_after_max"]
    ) -> timedelta | None:
        v = getattr(self, name)
        return None if v is None else parse_duration(v)
