"""The checks a manifest gets beyond its own fields, where it is written (admin API, config
dir, `rabbitmesh run`'s start): RabbitMQ name lengths and the Knative configuration."""

from __future__ import annotations

from dataclasses import dataclass

from rabbitmesh.amqp.names import Names
from rabbitmesh.config.knative import check_resource
from rabbitmesh.resources.base import Resource


@dataclass(frozen=True)
class ManifestChecks:
    """Picklable (the admin API validates bodies in a worker process): raises FieldError."""

    names: Names

    def __call__(self, res: Resource) -> None:
        self.names.check_length(res)
        check_resource(res)
