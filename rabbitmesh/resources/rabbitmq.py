"""eventing.knative.dev/v1alpha1 RabbitmqBrokerConfig, as knative-extensions/eventing-rabbitmq
defines it: which RabbitMQ (and vhost) a Broker's topology lives on, and its queue type.

A Broker names one in `spec.config`; rabbitmesh/config/brokers.py turns it into the broker's
placement. `rabbitmqClusterReference.connectionSecret` names a Secret (same namespace) whose
`uri` is an amqp:// or amqps:// URL; `rabbitmqClusterReference.name` (a RabbitmqCluster of
the RabbitMQ cluster operator) means the RabbitMQ rabbitmesh itself runs on
(RABBITMESH_AMQP_URL), as rabbitmesh has no cluster operator to ask.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.registry import register


class SecretName(Model):
    name: str


class ClusterReference(Model):
    name: str | None = None
    namespace: str | None = None
    connection_secret: SecretName | None = None


class RabbitmqBrokerConfigSpec(Model):
    rabbitmq_cluster_reference: ClusterReference | None = None
    #: eventing-rabbitmq's default is quorum.
    queue_type: Literal["quorum", "classic"] = "quorum"
    vhost: str | None = Field(None, min_length=1, max_length=255)


@register("eventing.knative.dev", ("v1alpha1",), "rabbitmqbrokerconfigs")
class RabbitmqBrokerConfig(Resource):
    spec: RabbitmqBrokerConfigSpec = Field(
        default_factory=lambda: RabbitmqBrokerConfigSpec.model_validate({})
    )

    def check(self) -> None:
        ref = self.spec.rabbitmq_cluster_reference
        if ref is not None and ref.name and ref.connection_secret is not None:
            # As eventing-rabbitmq's webhook: one way to name the cluster, not two.
            raise FieldError(
                "spec.rabbitmqClusterReference.connectionSecret",
                "set either name (a RabbitmqCluster) or connectionSecret, not both",
            )
        if ref is not None and not ref.name and ref.connection_secret is None:
            raise FieldError(
                "spec.rabbitmqClusterReference.name",
                "is required unless connectionSecret is set",
            )
