"""eventing.knative.dev/v1beta2 and v1beta3: EventType, the registry of the events on offer.

The two versions have different specs, as in Knative: v1beta2 names the type and source
directly (`spec.type`, `spec.source`, `spec.schema`, `spec.schemaData`, `spec.broker`), v1beta3
lists CloudEvents attributes (`spec.attributes[].{name, required, value}`). Both have
`spec.reference` (the addressable that offers the events) and `spec.description`. A manifest
is stored in the version it was written in; `ce_type`/`ce_source` read either.
"""

from __future__ import annotations

import re

from pydantic import Field

from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.duck import KReference
from rabbitmesh.resources.registry import register

V1BETA2_ONLY = ("type", "source", "schema", "schemaData", "broker")
#: Knative's v1beta3 validation requires these attributes to be described.
V1BETA3_REQUIRED = ("type", "source", "specversion", "id")
ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,20}$")


class EventAttribute(Model):
    name: str
    required: bool = False
    #: One value, or a template with `{placeholders}` for the parts that vary.
    value: str | None = None


class EventTypeSpec(Model):
    # v1beta2
    type: str | None = None
    source: str | None = None
    schema_url: str | None = Field(None, alias="schema")
    schema_data: str | None = None
    broker: str | None = None
    # both
    reference: KReference | None = None
    description: str | None = None
    # v1beta3
    attributes: list[EventAttribute] | None = None


@register("eventing.knative.dev", ("v1beta2", "v1beta3"), "eventtypes")
class EventType(Resource):
    spec: EventTypeSpec

    @property
    def version(self) -> str:
        return self.api_version.rsplit("/", 1)[-1]

    def check(self) -> None:
        spec = self.spec
        if self.version == "v1beta2":
            if spec.attributes is not None:
                raise FieldError(
                    "spec.attributes", "is a field of eventing.knative.dev/v1beta3, not v1beta2"
                )
            if not spec.type:
                raise FieldError("spec.type", "is required")
            return
        present = spec.model_dump(by_alias=True, exclude_none=True)
        for name in V1BETA2_ONLY:
            if name in present:
                raise FieldError(
                    f"spec.{name}",
                    "is a field of eventing.knative.dev/v1beta2; in v1beta3 describe it in "
                    "spec.attributes",
                )
        attrs = spec.attributes or []
        seen: set[str] = set()
        for i, attr in enumerate(attrs):
            if not ATTRIBUTE_NAME.match(attr.name):
                raise FieldError(
                    f"spec.attributes[{i}].name",
                    "must be 1-20 lowercase letters or digits (a CloudEvents attribute name)",
                )
            if attr.name in seen:
                raise FieldError(f"spec.attributes[{i}].name", f"{attr.name!r} appears twice")
            seen.add(attr.name)
        missing = [n for n in V1BETA3_REQUIRED if n not in seen]
        if missing:
            raise FieldError(
                "spec.attributes", f"missing attribute definitions: {', '.join(missing)}"
            )

    def _attribute(self, name: str) -> str | None:
        for attr in self.spec.attributes or []:
            if attr.name == name:
                return attr.value
        return None

    @property
    def ce_type(self) -> str:
        return self.spec.type or self._attribute("type") or ""

    @property
    def ce_source(self) -> str:
        return self.spec.source or self._attribute("source") or ""

    @property
    def ref(self) -> KReference | None:
        """The addressable offering these events: `spec.reference`, else v1beta2's `broker`."""
        if self.spec.reference is not None:
            return self.spec.reference
        if self.spec.broker:
            return KReference(
                api_version="eventing.knative.dev/v1", kind="Broker", name=self.spec.broker
            )
        return None
