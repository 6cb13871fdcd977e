"""eventing.knative.dev/v1: Broker and Trigger."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rabbitmesh.filters import FilterError, compile_trigger_filter
from rabbitmesh.resources.base import DNS1123_SUBDOMAIN, FieldError, Model, Resource
from rabbitmesh.resources.duck import DeliverySpec, Destination, KReference
from rabbitmesh.resources.registry import register


class BrokerSpec(Model):
    config: KReference | None = None
    delivery: DeliverySpec | None = None


#: Broker annotation naming the Secret (`name` or `name/key`) of its ingress' bearer tokens
#: (rabbitmesh/ingress/auth.py, docs/security.md).
INGRESS_TOKEN_ANNOTATION = "rabbitmesh.dev/ingress-token-secret"
INGRESS_TOKEN_DEFAULT_KEY = "token"


@register("eventing.knative.dev", ("v1",), "brokers", addressable=True)
class Broker(Resource):
    spec: BrokerSpec = Field(default_factory=BrokerSpec)

    def check(self) -> None:
        self.ingress_token_secret()

    def ingress_token_secret(self) -> tuple[str, str] | None:
        """(Secret name, key) of the ingress tokens, None when the ingress is open."""
        return ingress_token_secret(self)


def ingress_token_secret(res: Resource) -> tuple[str, str] | None:
    """(Secret name, key) that `res`'s annotation names for its ingress tokens (Brokers and
    JobSinks), None when its ingress is open; FieldError when the annotation is malformed."""
    raw = res.metadata.annotations.get(INGRESS_TOKEN_ANNOTATION)
    if raw is None:
        return None
    name, _, key = raw.strip().partition("/")
    key = key or INGRESS_TOKEN_DEFAULT_KEY
    if not DNS1123_SUBDOMAIN.match(name) or "/" in key:
        raise FieldError(
            f"metadata.annotations[{INGRESS_TOKEN_ANNOTATION}]",
            "must be a Secret name, optionally followed by /key (default key: token)",
        )
    return name, key


class TriggerFilter(Model):
    attributes: dict[str, str] = Field(default_factory=dict)


class TriggerSpec(Model):
    broker: str
    filter: TriggerFilter | None = None
    filters: list[dict[str, Any]] | None = None
    subscriber: Destination
    delivery: DeliverySpec | None = None


@register("eventing.knative.dev", ("v1",), "triggers")
class Trigger(Resource):
    spec: TriggerSpec

    def check(self) -> None:
        attrs = self.spec.filter.attributes if self.spec.filter else {}
        try:  # also checks the names in filter.attributes (^[a-z][a-z0-9]*$)
            compile_trigger_filter(attrs, self.spec.filters)
        except FilterError as e:
            raise FieldError(e.path, e.message) from None
