"""RabbitMQ bridges: RabbitmqSource (messages of a RabbitMQ queue in, as eventing-rabbitmq's
`sources.knative.dev/v1alpha1` kind) and RabbitmqSink (events out to a RabbitMQ exchange,
`sinks.rabbitmesh.dev/v1alpha1`, as KafkaSink is for Kafka).

The runtimes: rabbitmesh/sources/rabbitmq.py and rabbitmesh/reconciler/rabbitmqsink.py.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.duck import DeliverySpec
from rabbitmesh.resources.registry import register
from rabbitmesh.resources.sources import Source, SourceSpec

RABBITMQ_TYPE = "dev.knative.rabbitmq.event"

#: AMQP short strings (exchange, queue, routing key) are at most 255 bytes.
SHORT_STRING = 255


class LocalObjectReference(Model):
    name: str = Field(min_length=1)


class RabbitmqClusterReference(Model):
    """eventing-rabbitmq's reference: a RabbitmqCluster by `name` (rabbitmesh has none: its
    own RabbitMQ is used), or a `connectionSecret` whose key `uri` is another RabbitMQ."""

    name: str | None = None
    namespace: str | None = None
    connection_secret: LocalObjectReference | None = None


class RabbitmqResourcesConfig(Model):
    predeclared: bool = False
    exchange_name: str | None = None
    queue_name: str = Field(min_length=1, max_length=SHORT_STRING)
    #: 1: one message at a time (FIFO); up to 1000 in flight otherwise.
    parallelism: int = Field(1, ge=1, le=1000)
    vhost: str | None = None


class RabbitmqSourceSpec(SourceSpec):
    rabbitmq_cluster_reference: RabbitmqClusterReference | None = None
    rabbitmq_resources_config: RabbitmqResourcesConfig
    delivery: DeliverySpec | None = None
    service_account_name: str | None = None


@register("sources.knative.dev", ("v1alpha1",), "rabbitmqsources")
class RabbitmqSource(Source):
    spec: RabbitmqSourceSpec

    def check(self) -> None:
        super().check()
        cfg = self.spec.rabbitmq_resources_config
        if cfg.exchange_name is not None and len(cfg.exchange_name.encode()) > SHORT_STRING:
            raise FieldError(
                "spec.rabbitmqResourcesConfig.exchangeName", "at most 255 bytes (AMQP)"
            )
        if len(cfg.queue_name.encode()) > SHORT_STRING:
            raise FieldError("spec.rabbitmqResourcesConfig.queueName", "at most 255 bytes (AMQP)")
        if cfg.exchange_name is not None and cfg.exchange_name.startswith("amq."):
            if not cfg.predeclared:
                raise FieldError(
                    "spec.rabbitmqResourcesConfig.exchangeName",
                    "names starting with 'amq.' are RabbitMQ's own: set predeclared: true to "
                    "bind to an existing one",
                )

    @property
    def connection_secret(self) -> str | None:
        ref = self.spec.rabbitmq_cluster_reference
        return ref.connection_secret.name if ref and ref.connection_secret else None

    @property
    def ce_source(self) -> str:
        queue = self.spec.rabbitmq_resources_config.queue_name
        return f"/apis/v1/namespaces/{self.namespace}/rabbitmqsources/{self.name}#{queue}"

    def declared_event_types(self) -> list[tuple[str, str]]:
        return [(RABBITMQ_TYPE, self.ce_source)]


# --- RabbitmqSink -------------------------------------------------------------------------

#: `{attribute}` placeholders of a routing key template.
PLACEHOLDER = re.compile(r"\{([a-z0-9]+)\}")
_BRACES = re.compile(r"[{}]")


class RabbitmqSinkSpec(Model):
    #: An exchange that exists on the target RabbitMQ (rabbitmesh never declares it).
    exchange_name: str = Field(min_length=1, max_length=SHORT_STRING)
    #: The routing key: literal text with `{attribute}` placeholders ("{type}", the default,
    #: or "orders.{subject}"). An event lacking a named attribute is refused (400).
    routing_key: str = "{type}"
    #: `binary`: the RabbitMQ CloudEvents binding (ce- headers); `structured`: the event as
    #: JSON (application/cloudevents+json).
    content_mode: Literal["binary", "structured"] = "binary"
    connection_secret: LocalObjectReference | None = None
    vhost: str | None = None


@register("sinks.rabbitmesh.dev", ("v1alpha1",), "rabbitmqsinks", addressable=True)
class RabbitmqSink(Resource):
    spec: RabbitmqSinkSpec

    def check(self) -> None:
        if self.spec.exchange_name.startswith("amq.") and self.spec.exchange_name not in (
            "amq.topic",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
        ):
            raise FieldError("spec.exchangeName", "not a RabbitMQ exchange one may publish to")
        rest = PLACEHOLDER.sub("", self.spec.routing_key)
        if _BRACES.search(rest):
            raise FieldError(
                "spec.routingKey",
                "placeholders are {attribute} with a lowercase attribute name "
                "(letters and digits), e.g. '{type}' or 'orders.{subject}'",
            )
        if len(rest.encode()) > SHORT_STRING:
            raise FieldError("spec.routingKey", "at most 255 bytes (AMQP)")

    @property
    def connection_secret(self) -> str | None:
        s = self.spec.connection_secret
        return s.name if s is not None else None
