"""What every resource kind shares: Kubernetes-shaped metadata, status and validation errors.

Each kind is a pydantic model in its own module that subclasses `Resource` and registers itself
with `rabbitmesh.resources.registry.register`, so adding a kind touches one new module only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class FieldError(ValueError):
    """A semantic validation error at a field path such as `spec.filters[1].exact`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class Model(BaseModel):
    """Base of spec models: camelCase on the wire, unknown fields rejected (they are typos)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int = 1
    creation_timestamp: str | None = Field(None, alias="creationTimestamp")
    # Server-managed (from the resource store); ignored when a manifest sets them, except
    # resourceVersion on a replace, where it is the version the client last read.
    uid: str | None = None
    resource_version: str | None = Field(None, alias="resourceVersion")
    #: As Kubernetes': a resource owned by another goes when its owner goes.
    owner_references: list[dict[str, Any]] | None = Field(None, alias="ownerReferences")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > 253 or not DNS1123_SUBDOMAIN.match(v):
            raise ValueError(
                "must be lowercase letters, digits, '-' and '.', start and end alphanumeric "
                "(at most 253 characters)"
            )
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if len(v) > 63 or not DNS1123_LABEL.match(v):
            raise ValueError(
                "must be lowercase letters, digits and '-', start and end alphanumeric "
                "(at most 63 characters)"
            )
        return v


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    type: str
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")

    model_config = ConfigDict(populate_by_name=True)


class Address(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    url: str
    #: The `aud` a sender's token must have (authentication_oidc only).
    audience: str | None = None


class Status(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    address: Address | None = None

    def set_ready(self, ok: bool | None, reason: str = "", message: str = "") -> None:
        status: ConditionStatus = "Unknown" if ok is None else ("True" if ok else "False")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for c in self.conditions:
            if c.type == "Ready":
                if c.status != status:
                    c.last_transition_time = now
                c.status, c.reason, c.message = status, reason or None, message or None
                return
        self.conditions.append(
            Condition(
                type="Ready",
                status=status,
                reason=reason or None,
                message=message or None,
                lastTransitionTime=now,
            )
        )

    @property
    def ready(self) -> ConditionStatus:
        for c in self.conditions:
            if c.type == "Ready":
                return c.status
        return "Unknown"


class Resource(BaseModel):
    """A manifest: apiVersion, kind, metadata, spec; status is ours, never read from input."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    #: False for cluster-scoped kinds (Namespace): their metadata.namespace is "".
    NAMESPACED: ClassVar[bool] = True

    # Filled in by `register`.
    GROUP: ClassVar[str]
    VERSIONS: ClassVar[tuple[str, ...]]
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    ADDRESSABLE: ClassVar[bool] = False

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    status: Status = Field(default_factory=Status, exclude=False)

    @field_validator("status", mode="before")
    @classmethod
    def _ignore_input_status(cls, v: Any) -> Status:
        return Status()

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.KIND, self.metadata.namespace, self.metadata.name)

    def check(self) -> None:
        """Semantic validation beyond field types; raise FieldError. Overridden per kind."""

    def declared_event_types(self) -> list[tuple[str, str]]:
        """(type, source) of the events this resource emits, for the EventType registry.

        Sources override it (Knative's `status.ceAttributes`); others emit nothing of their own.
        """
        return []

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
