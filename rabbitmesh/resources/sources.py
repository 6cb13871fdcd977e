"""sources.knative.dev: PingSource, ContainerSource, ApiServerSource, SinkBinding (v1) and
GitLabSource (v1alpha1) — the manifests, validated as Knative validates them.

Besides validation, each model knows the types it declares (`declared_event_types`, Knative's
`status.ceAttributes`, from which the EventType registry derives its entries). Running a source
is rabbitmesh/sources/ (one module per kind) and rabbitmesh/reconciler/sources.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from rabbitmesh.cron import Schedule, ScheduleError
from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.duck import Destination
from rabbitmesh.resources.registry import register

PING_TYPE = "dev.knative.sources.ping"

#: How a ContainerSource's containers run: `process` (command + args) or `docker` (image).
RUNTIME_ANNOTATION = "rabbitmesh.dev/runtime"
RUNTIMES = ("process", "docker")

# A container image reference, as Docker's distribution/reference grammar defines it:
# [registry[:port]/]path[:tag][@digest]. Nothing else may reach `docker run` as the image
# (a value starting with `-` would be read as an option).
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"\w[\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?",
    re.ASCII,
)


def image_problem(image: str) -> str | None:
    """Why `image` is not a container image reference, or None when it is one."""
    if not IMAGE_REFERENCE.fullmatch(image):
        return (
            "must be a container image reference: [registry[:port]/]path[:tag][@digest], "
            "path in lowercase letters, digits and separators (for example "
            "ghcr.io/me/app:1.2 or docker.io/library/alpine@sha256:<hex>)"
        )
    return None


#: GitLab hook names (spec.eventTypes) -> the event type suffix the source emits for them:
#: eventing-gitlab's receive adapter names a type after the `X-Gitlab-Event` header GitLab
#: sends ("Confidential Issue Hook" -> `dev.knative.sources.gitlab.confidential_issue`).
GITLAB_EVENTS = {
    "push_events": "push",
    "tag_push_events": "tag_push",
    "issues_events": "issue",
    "confidential_issues_events": "confidential_issue",
    "merge_requests_events": "merge_request",
    "note_events": "note",
    "confidential_note_events": "confidential_note",
    "job_events": "job",
    "pipeline_events": "pipeline",
    "wiki_page_events": "wiki_page",
    "deployment_events": "deployment",
}
GITLAB_TYPE_PREFIX = "dev.knative.sources.gitlab."

APISERVER_TYPE_PREFIX = "dev.knative.apiserver."

#: Attributes a source sets itself: ceOverrides may only add extensions.
RESERVED_ATTRIBUTES = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
)


class CloudEventOverrides(Model):
    extensions: dict[str, str] = Field(default_factory=dict)


class SourceSpec(Model):
    """Knative's duck SourceSpec: where events go, and attributes to override."""

    sink: Destination
    ce_overrides: CloudEventOverrides | None = None


class Source(Resource):
    """What every source kind shares."""

    spec: SourceSpec

    def sink_ref(self) -> dict[str, Any] | None:
        ref = self.spec.sink.ref
        return None if ref is None else ref.dump()

    @property
    def extensions(self) -> dict[str, str]:
        """ceOverrides.extensions, added to every event the source emits."""
        o = self.spec.ce_overrides
        return dict(o.extensions) if o is not None else {}

    def check(self) -> None:
        o = self.spec.ce_overrides
        for key in o.extensions if o is not None else ():
            if not key or not key.isascii() or not key.isalnum() or key != key.lower():
                raise FieldError(
                    f"spec.ceOverrides.extensions.{key}",
                    "an extension name is lowercase letters and digits only",
                )
            if key in RESERVED_ATTRIBUTES:
                raise FieldError(
                    f"spec.ceOverrides.extensions.{key}",
                    f"{key!r} is a CloudEvents attribute the source sets, not an extension",
                )


# --- PingSource -------------------------------------------------------------------------


class PingSourceSpec(SourceSpec):
    schedule: str = "* * * * *"  # Knative's default
    timezone: str | None = None
    content_type: str | None = None
    data: str | None = None
    data_base64: str | None = None


@register("sources.knative.dev", ("v1",), "pingsources")
class PingSource(Source):
    spec: PingSourceSpec

    def check(self) -> None:
        super().check()
        s = self.spec
        try:
            Schedule(s.schedule)
        except ScheduleError as e:
            raise FieldError(
                "spec.schedule", f"invalid cron expression {s.schedule!r}: {e}"
            ) from None
        try:
            Schedule(s.schedule, s.timezone)
        except ScheduleError as e:
            raise FieldError("spec.timezone", str(e)) from None
        if s.data and s.data_base64:
            raise FieldError("spec.data", "data and dataBase64 are mutually exclusive")
        json_data = (s.content_type or "").split(";")[0].strip().lower() == "application/json"
        if s.data_base64:
            try:
                decoded = base64.b64decode("".join(s.data_base64.split()), validate=True)
            except (binascii.Error, ValueError):
                raise FieldError("spec.dataBase64", "is not valid base64") from None
            if json_data:
                _check_json_object(decoded, "spec.dataBase64")
        elif s.data and json_data:
            _check_json_object(s.data.encode(), "spec.data")

    def payload(self) -> bytes | None:
        """The bytes each tick carries: `data` as UTF-8, or `dataBase64` decoded."""
        if self.spec.data_base64:
            return base64.b64decode("".join(self.spec.data_base64.split()))
        return self.spec.data.encode() if self.spec.data else None

    @property
    def ce_source(self) -> str:
        return f"/apis/v1/namespaces/{self.namespace}/pingsources/{self.name}"

    def declared_event_types(self) -> list[tuple[str, str]]:
        return [(PING_TYPE, self.ce_source)]


def _check_json_object(raw: bytes, path: str) -> None:
    """contentType application/json: Knative requires the data to be a JSON object."""
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise FieldError(
            path, f"is not valid JSON (contentType is application/json): {e}"
        ) from None
    if not isinstance(value, dict):
        raise FieldError(path, "must be a JSON object when contentType is application/json")


# --- ContainerSource --------------------------------------------------------------------

#: `valueFrom.fieldRef.fieldPath`s a container's env may use (the source plays the pod).
FIELD_PATHS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    field_path: str | None = None
    secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class Container:
    """What rabbitmesh reads from one container of `spec.template.spec.containers`."""

    name: str
    image: str | None
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[EnvVar, ...]
    working_dir: str | None


class ContainerSourceSpec(SourceSpec):
    #: A pod template: `spec.containers[]` with name, image, command, args, env, workingDir.
    #: Other pod fields are accepted and ignored (there is no pod).
    template: dict[str, Any]


@register("sources.knative.dev", ("v1",), "containersources")
class ContainerSource(Source):
    spec: ContainerSourceSpec

    def check(self) -> None:
        super().check()
        runtime = self.metadata.annotations.get(RUNTIME_ANNOTATION)
        if runtime is not None and runtime not in RUNTIMES:
            raise FieldError(
                f"metadata.annotations.{RUNTIME_ANNOTATION}",
                f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}",
            )
        self.containers()

    @property
    def runtime(self) -> str | None:
        """The annotation's runtime, or None for the RABBITMESH_CONTAINER_RUNTIME default."""
        return self.metadata.annotations.get(RUNTIME_ANNOTATION)

    def containers(self) -> list[Container]:
        """The containers, validated; raises FieldError naming the field."""
        return parse_containers(self.spec.template, "spec.template", self.name)


def parse_containers(template: dict[str, Any], path: str, default_name: str) -> list[Container]:
    """The containers of a pod template (`{path}.spec.containers`), validated; raises
    FieldError naming the field. ContainerSource and JobSink (its Job's template) share it."""
    spec = template.get("spec")
    raw = spec.get("containers") if isinstance(spec, dict) else None
    path = f"{path}.spec.containers"
    if not isinstance(raw, list) or not raw:
        raise FieldError(path, "at least one container is required")
    out: list[Container] = []
    for i, c in enumerate(raw):
        here = f"{path}[{i}]"
        if not isinstance(c, dict):
            raise FieldError(here, "must be a mapping")
        name = c.get("name") or (default_name if len(raw) == 1 else f"{default_name}-{i}")
        image = c.get("image")
        if image is not None and not isinstance(image, str):
            raise FieldError(f"{here}.image", "must be a string")
        if image and (problem := image_problem(image)) is not None:
            raise FieldError(f"{here}.image", problem)
        command = _strings(c.get("command"), f"{here}.command")
        if not image and not command:
            raise FieldError(here, "needs an image (docker runtime) or a command")
        working_dir = c.get("workingDir")
        if working_dir is not None and not isinstance(working_dir, str):
            raise FieldError(f"{here}.workingDir", "must be a string")
        out.append(
            Container(
                name=str(name),
                image=image or None,
                command=command,
                args=_strings(c.get("args"), f"{here}.args"),
                env=_env(c.get("env"), f"{here}.env"),
                working_dir=working_dir,
            )
        )
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise FieldError(path, f"container names must be unique, got {names}")
    return out


def _strings(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise FieldError(path, "must be a list of strings")
    return tuple(str(v) for v in value)


def _env(value: object, path: str) -> tuple[EnvVar, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FieldError(path, "must be a list of {name, value} or {name, valueFrom}")
    out = []
    for i, item in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise FieldError(here, "needs a name")
        name, source = item["name"], item.get("valueFrom")
        if source is None:
            raw = item.get("value", "")
            out.append(EnvVar(name, value="" if raw is None else str(raw)))
            continue
        field_ref = source.get("fieldRef") if isinstance(source, dict) else None
        secret_ref = source.get("secretKeyRef") if isinstance(source, dict) else None
        if isinstance(field_ref, dict):
            fp = field_ref.get("fieldPath")
            if fp not in FIELD_PATHS:
                raise FieldError(
                    f"{here}.valueFrom.fieldRef.fieldPath",
                    f"{fp!r} is not supported; one of {', '.join(FIELD_PATHS)}",
                )
            out.append(EnvVar(name, field_path=fp))
        elif isinstance(secret_ref, dict):
            sname, key = secret_ref.get("name"), secret_ref.get("key")
            if not isinstance(sname, str) or not isinstance(key, str) or not sname or not key:
                raise FieldError(f"{here}.valueFrom.secretKeyRef", "needs name and key")
            optional = bool(secret_ref.get("optional", False))
            out.append(EnvVar(name, secret=SecretKeyRef(sname, key, optional)))
        else:
            raise FieldError(
                f"{here}.valueFrom",
                "only fieldRef (metadata.name, metadata.namespace) and secretKeyRef are supported",
            )
    return tuple(out)


# --- ApiServerSource --------------------------------------------------------------------


class LabelSelectorRequirement(Model):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        has = bool(self.values)
        if self.operator in ("In", "NotIn") and not has:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and has:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(Model):
    """Kubernetes' metav1.LabelSelector."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def query(self) -> str:
        """The selector as the API server's `labelSelector` query parameter."""
        parts = [f"{k}={v}" for k, v in sorted((self.match_labels or {}).items())]
        for r in self.match_expressions or []:
            if r.operator == "Exists":
                parts.append(r.key)
            elif r.operator == "DoesNotExist":
                parts.append(f"!{r.key}")
            else:
                op = "in" if r.operator == "In" else "notin"
                parts.append(f"{r.key} {op} ({','.join(sorted(r.values or []))})")
        return ",".join(parts)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in (self.match_labels or {}).items()):
            return False
        for r in self.match_expressions or []:
            present = r.key in labels
            if r.operator == "Exists" and not present:
                return False
            if r.operator == "DoesNotExist" and present:
                return False
            if r.operator == "In" and labels.get(r.key) not in (r.values or []):
                return False
            if r.operator == "NotIn" and present and labels[r.key] in (r.values or []):
                return False
        return True


class ApiServerResource(Model):
    api_version: str
    kind: str
    selector: LabelSelector | None = None


class APIVersionKind(Model):
    api_version: str
    kind: str


class ApiServerSourceSpec(SourceSpec):
    resources: list[ApiServerResource] = Field(min_length=1)
    owner: APIVersionKind | None = None
    mode: Literal["Reference", "Resource"] = "Reference"
    service_account_name: str | None = None
    namespace_selector: LabelSelector | None = None
    #: Knative's experimental Subscriptions API filters on the emitted events.
    filters: list[dict[str, Any]] | None = None


def _check_api_version(value: str, path: str) -> None:
    parts = value.split("/")
    if not value or len(parts) > 2 or not all(parts):
        raise FieldError(path, f"invalid apiVersion {value!r}: expected VERSION or GROUP/VERSION")


@register("sources.knative.dev", ("v1",), "apiserversources")
class ApiServerSource(Source):
    spec: ApiServerSourceSpec

    def check(self) -> None:
        super().check()
        for i, r in enumerate(self.spec.resources):
            _check_api_version(r.api_version, f"spec.resources[{i}].apiVersion")
            if not r.kind.strip():
                raise FieldError(f"spec.resources[{i}].kind", "is required")
        if self.spec.owner is not None:
            _check_api_version(self.spec.owner.api_version, "spec.owner.apiVersion")
            if not self.spec.owner.kind.strip():
                raise FieldError("spec.owner.kind", "is required")
        if self.spec.filters:
            from rabbitmesh.filters import FilterError, compile_filters

            try:
                compile_filters(self.spec.filters)
            except FilterError as e:
                raise FieldError(e.path, e.message) from None

    @property
    def event_kind(self) -> str:
        return "ref" if self.spec.mode == "Reference" else "resource"

    def declared_event_types(self) -> list[tuple[str, str]]:
        # The source is the API server's URL, known only where the source runs.
        return [
            (f"{APISERVER_TYPE_PREFIX}{self.event_kind}.{op}", "")
            for op in ("add", "update", "delete")
        ]


# --- SinkBinding ------------------------------------------------------------------------


class SinkBindingSpec(SourceSpec):
    #: Knative binds a Deployment/Job/...; here `rabbitmesh sinkbinding exec` is the subject.
    subject: dict[str, Any] | None = None


@register("sources.knative.dev", ("v1",), "sinkbindings")
class SinkBinding(Source):
    spec: SinkBindingSpec


# --- GitLabSource -----------------------------------------------------------------------


class SecretKeySelector(Model):
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    optional: bool | None = None


class SecretValueFromSource(Model):
    secret_key_ref: SecretKeySelector


class GitLabSourceSpec(SourceSpec):
    project_url: str
    event_types: list[str] = Field(min_length=1)
    access_token: SecretValueFromSource | None = None
    secret_token: SecretValueFromSource | None = None
    sslverify: bool | None = None
    service_account_name: str | None = None


@register("sources.knative.dev", ("v1alpha1",), "gitlabsources")
class GitLabSource(Source):
    spec: GitLabSourceSpec

    def check(self) -> None:
        super().check()
        url = urlsplit(self.spec.project_url)
        if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/") == "":
            raise FieldError(
                "spec.projectUrl",
                f"expected the project's URL, such as https://gitlab.com/group/project, "
                f"got {self.spec.project_url!r}",
            )
        for i, name in enumerate(self.spec.event_types):
            if name not in GITLAB_EVENTS:
                raise FieldError(
                    f"spec.eventTypes[{i}]",
                    f"unknown GitLab event {name!r}; one of {', '.join(GITLAB_EVENTS)}",
                )

    def declared_event_types(self) -> list[tuple[str, str]]:
        types = sorted({GITLAB_TYPE_PREFIX + GITLAB_EVENTS[e] for e in self.spec.event_types})
        return [(t, self.spec.project_url) for t in types]
