"""sinks.knative.dev/v1alpha1: JobSink (Knative 1.15).

`spec.job` is a Kubernetes Job; rabbitmesh reads the containers of its pod template as
ContainerSource reads its template (name, image, command, args, env, workingDir) and runs one
per event with ContainerSource's runtimes (docs/jobsink.md). Other Job and pod fields are
accepted and ignored, as there is no Kubernetes.
"""

from __future__ import annotations

from typing import Any

from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.eventing import ingress_token_secret
from rabbitmesh.resources.registry import register
from rabbitmesh.resources.sources import (
    RUNTIME_ANNOTATION,
    RUNTIMES,
    Container,
    parse_containers,
)


class JobSinkSpec(Model):
    #: A batch/v1 Job: `spec.template.spec.containers[]` is what runs.
    job: dict[str, Any] | None = None


@register("sinks.knative.dev", ("v1alpha1",), "jobsinks", addressable=True)
class JobSink(Resource):
    spec: JobSinkSpec

    def check(self) -> None:
        job = self.spec.job
        if job is None:
            raise FieldError("spec.job", "missing field(s)")  # as Knative's webhook
        runtime = self.metadata.annotations.get(RUNTIME_ANNOTATION)
        if runtime is not None and runtime not in RUNTIMES:
            raise FieldError(
                f"metadata.annotations.{RUNTIME_ANNOTATION}",
                f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}",
            )
        self.containers()
        ingress_token_secret(self)

    @property
    def runtime(self) -> str | None:
        return self.metadata.annotations.get(RUNTIME_ANNOTATION)

    def containers(self) -> list[Container]:
        job = self.spec.job or {}
        spec = job.get("spec")
        template = spec.get("template") if isinstance(spec, dict) else None
        if not isinstance(template, dict):
            raise FieldError("spec.job.spec.template", "missing field(s): a pod template")
        return parse_containers(template, "spec.job.spec.template", self.name)
