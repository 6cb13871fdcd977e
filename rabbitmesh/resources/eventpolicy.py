"""EventPolicy (`eventing.knative.dev/v1alpha1`, Knative 1.15-1.16): who may send to which
targets. Enforcement: rabbitmesh/auth/ (with `RABBITMESH_AUTHENTICATION_OIDC`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.registry import register
from rabbitmesh.resources.sources import LabelSelector


class PolicyRef(Model):
    api_version: str | None = None
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)
    namespace: str | None = None


class PolicySelector(LabelSelector):
    """Knative's EventPolicySelector: a kind and (inline, as in Knative) a label selector."""

    api_version: str | None = None
    kind: str | None = None


class PolicyTo(Model):
    ref: PolicyRef | None = None
    selector: PolicySelector | None = None

    @model_validator(mode="after")
    def _one(self) -> PolicyTo:
        if (self.ref is None) == (self.selector is None):
            raise ValueError("exactly one of ref and selector")
        return self


class PolicyFrom(Model):
    ref: PolicyRef | None = None
    sub: str | None = None

    @model_validator(mode="after")
    def _one(self) -> PolicyFrom:
        if (self.ref is None) == (self.sub is None):
            raise ValueError("exactly one of ref and sub")
        return self


class EventPolicySpec(Model):
    to: list[PolicyTo] | None = None
    from_: list[PolicyFrom] | None = Field(None, alias="from")
    filters: list[dict[str, Any]] | None = None


@register("eventing.knative.dev", ("v1alpha1",), "eventpolicies")
class EventPolicy(Resource):
    spec: EventPolicySpec = Field(default_factory=EventPolicySpec)

    def check(self) -> None:
        for i, f in enumerate(self.spec.from_ or []):
            if f.sub is not None:
                if not f.sub or "*" in f.sub[:-1]:
                    raise FieldError(
                        f"spec.from[{i}].sub",
                        "a subject, or a prefix followed by one trailing '*'",
                    )
        if self.spec.filters:
            from rabbitmesh.filters import FilterError, compile_filters

            try:
                compile_filters(self.spec.filters)
            except FilterError as e:
                raise FieldError(e.path, e.message) from None
