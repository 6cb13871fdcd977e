"""messaging.knative.dev/v1: Channel (InMemoryChannel is the same kind here) and Subscription.

Every channel kind is one thing in rabbitmesh: a durable RabbitMQ fanout exchange. A Channel's
`spec.channelTemplate` (InMemoryChannel, KafkaChannel, ...) is accepted and recorded in its
status, and changes nothing else (docs/channels-and-flows.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, field_validator

from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.duck import DeliverySpec, Destination, KReference
from rabbitmesh.resources.registry import register

MESSAGING_V1 = "messaging.knative.dev/v1"
#: What Knative's default-ch-webhook fills in when a Channel names no template.
DEFAULT_CHANNEL_KIND = "InMemoryChannel"


class ChannelTemplate(Model):
    """Knative's ChannelTemplateSpec: which channel kind backs a Channel, Sequence or Parallel.

    Only `spec.delivery` means anything here (generated channels pass it on to their
    subscriptions, as in Knative); every kind maps to a RabbitMQ fanout exchange.
    """

    api_version: str | None = None
    kind: str = DEFAULT_CHANNEL_KIND
    spec: dict[str, Any] | None = None

    @field_validator("spec")
    @classmethod
    def _delivery(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v and v.get("delivery") is not None:
            try:
                DeliverySpec.model_validate(v["delivery"])
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                raise ValueError(f"delivery{'.' + where if where else ''}: {msg}") from None
        return v

    @property
    def delivery(self) -> DeliverySpec | None:
        raw = (self.spec or {}).get("delivery")
        return None if raw is None else DeliverySpec.model_validate(raw)

    def reference(self, name: str, namespace: str) -> dict[str, str]:
        """The backing channel as Knative's status shows it (`status.channel`)."""
        return {
            "apiVersion": self.api_version or MESSAGING_V1,
            "kind": self.kind,
            "name": name,
            "namespace": namespace,
        }


class ChannelSpec(Model):
    channel_template: ChannelTemplate | None = None
    delivery: DeliverySpec | None = None
    # KafkaChannel's own fields (messaging.knative.dev/v1beta1): accepted, with the meaning
    # rabbitmesh/config/knative.py gives them (reported in the channel's status).
    num_partitions: int | None = None
    replication_factor: int | None = None
    retention_duration: str | None = None


#: Channel kinds that are a Channel here (one RabbitMQ fanout exchange each).
CHANNEL_KINDS = ("InMemoryChannel", "KafkaChannel", "NatssChannel")


@register(
    "messaging.knative.dev",
    # v1beta1: KafkaChannel's and NatssChannel's version (the article writes KafkaChannel v1).
    ("v1", "v1beta1"),
    "channels",
    aliases=CHANNEL_KINDS,
    addressable=True,
)
class Channel(Resource):
    spec: ChannelSpec = Field(default_factory=ChannelSpec)

    # Its spec per channel kind (numPartitions only on a KafkaChannel, ...) is checked by
    # rabbitmesh/config/knative.py (channel_warnings), where manifests are checked.

    @property
    def template(self) -> ChannelTemplate:
        """The backing channel kind: the template, else the manifest's own kind if that is a
        concrete one (InMemoryChannel), else Knative's default."""
        if self.spec.channel_template is not None:
            return self.spec.channel_template
        kind = self.kind if self.kind != "Channel" else DEFAULT_CHANNEL_KIND
        return ChannelTemplate(api_version=self.api_version, kind=kind)


class SubscriptionSpec(Model):
    channel: KReference
    subscriber: Destination | None = None
    reply: Destination | None = None
    delivery: DeliverySpec | None = None


@register("messaging.knative.dev", ("v1",), "subscriptions")
class Subscription(Resource):
    spec: SubscriptionSpec

    def check(self) -> None:
        ref = self.spec.channel
        if not ref.kind.endswith("Channel"):
            raise FieldError(
                "spec.channel.kind",
                f"must be a channel kind (Channel, InMemoryChannel, ...), got {ref.kind!r}",
            )
        # A channel of another namespace needs config-features' cross-namespace-event-links:
        # checked where the configuration is known (the admin API, the reconciler).
        if self.spec.subscriber is None and self.spec.reply is None:
            raise FieldError("spec.subscriber", "a subscription needs a subscriber or a reply")
