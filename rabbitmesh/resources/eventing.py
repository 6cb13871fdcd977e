"""eventing.knative.dev/v1: Broker and Trigger."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

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
        raw = self.metadata.annotations.get(INGRESS_TOKEN_ANNOTATION)
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


#: eventing-rabbitmq's trigger annotation: deliveries in flight for this trigger (1 = FIFO).
PARALLELISM_ANNOTATION = "rabbitmq.eventing.knative.dev/parallelism"
#: Its older name (eventing-rabbitmq before 1.6), read the same way.
PREFETCH_ANNOTATION = "rabbitmq.eventing.knative.dev/prefetchCount"
MAX_PARALLELISM = 1000


class TriggerFilter(Model):
    attributes: dict[str, str] = Field(default_factory=dict)


class TriggerSpec(Model):
    #: The broker's name; Knative 1.14's `brokerRef` (another namespace's broker, with
    #: `cross-namespace-event-links`) fills it in when it is absent.
    broker: str
    broker_ref: KReference | None = None
    filter: TriggerFilter | None = None
    filters: list[dict[str, Any]] | None = None
    subscriber: Destination
    delivery: DeliverySpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _broker_from_ref(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("broker"):
            ref = data.get("brokerRef", data.get("broker_ref"))
            name = ref.get("name") if isinstance(ref, dict) else None
            if isinstance(name, str) and name:
                data = {**data, "broker": name}
        return data


@register("eventing.knative.dev", ("v1",), "triggers")
class Trigger(Resource):
    spec: TriggerSpec

    def parallelism(self) -> tuple[int, str] | None:
        """(deliveries in flight, the annotation that set it), or None when none does."""
        for name in (PARALLELISM_ANNOTATION, PREFETCH_ANNOTATION):
            raw = self.metadata.annotations.get(name)
            if raw is None:
                continue
            text = raw.strip()
            if not text.isdigit() or not 1 <= int(text) <= MAX_PARALLELISM:
                raise FieldError(
                    f"metadata.annotations[{name}]",
                    f"must be a whole number from 1 (FIFO) to {MAX_PARALLELISM}, got {raw!r}",
                )
            return int(text), name
        return None

    def broker_namespace(self) -> str:
        ref = self.spec.broker_ref
        return (ref.namespace if ref is not None else None) or self.namespace

    def check(self) -> None:
        self.parallelism()
        ref = self.spec.broker_ref
        if ref is not None:
            if ref.name != self.spec.broker:
                raise FieldError("spec.brokerRef.name", "must name the same broker as spec.broker")
            if ref.kind != "Broker":
                raise FieldError("spec.brokerRef.kind", f"must be Broker, got {ref.kind!r}")
        attrs = self.spec.filter.attributes if self.spec.filter else {}
        try:  # also checks the names in filter.attributes (^[a-z][a-z0-9]*$)
            compile_trigger_filter(attrs, self.spec.filters)
        except FilterError as e:
            raise FieldError(e.path, e.message) from None
