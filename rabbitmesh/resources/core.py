"""The core `v1` kinds rabbitmesh accepts: Secret (for `secretKeyRef`s) and Namespace.

A Secret's values live in the resource store like every other resource, but they never leave
it: the admin API shows the keys with redacted values, and nothing logs them.
A Namespace labelled `eventing.knative.dev/injection: enabled` gets a Broker named `default`,
as Knative's namespace reconciler gives it (rabbitmesh/store/desired.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator, model_validator

from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.registry import register

#: What the admin API shows instead of a Secret value; sending it back keeps the stored value.
REDACTED = "<redacted>"

INJECTION_LABEL = "eventing.knative.dev/injection"
#: Knative's label on the brokers its namespace reconciler made.
INJECTED_LABEL = "eventing.knative.dev/namespaceInjected"


@register("", ("v1",), "secrets")
class Secret(Resource):
    type: str = "Opaque"
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict, alias="stringData")
    immutable: bool | None = None

    def check(self) -> None:
        for key, value in self.data.items():
            if value == REDACTED:
                continue  # "keep the stored value" (see rabbitmesh/api/objects.py)
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                # The value itself is never repeated in an error: it is a secret.
                raise FieldError(f"data.{key}", "must be base64-encoded") from None

    def normalized(self) -> Secret:
        """`stringData` merged into `data` (base64), as Kubernetes stores a Secret."""
        data = dict(self.data)
        for key, value in self.string_data.items():
            data[key] = base64.b64encode(value.encode()).decode()
        return self.model_copy(update={"data": data, "string_data": {}})

    def value(self, key: str) -> str | None:
        """The decoded value of `key` (stringData wins, as in Kubernetes), or None."""
        if key in self.string_data:
            return self.string_data[key]
        raw = self.data.get(key)
        return None if raw is None else base64.b64decode(raw).decode(errors="replace")

    def __repr__(self) -> str:  # never a value in a log line or traceback
        keys = sorted({*self.data, *self.string_data})
        return f"Secret({self.namespace}/{self.name}, keys={keys})"

    __str__ = __repr__


@register("", ("v1",), "namespaces")
class Namespace(Resource):
    """Cluster-scoped: its key and API path have no namespace."""

    NAMESPACED: ClassVar[bool] = False

    spec: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cluster_scoped(self) -> Namespace:
        self.metadata.namespace = ""
        return self

    def check(self) -> None:
        if len(self.name) > 63 or "." in self.name:
            raise FieldError(
                "metadata.name",
                "a namespace name must be a DNS label: lowercase letters, digits and '-' "
                "(at most 63 characters)",
            )

    @property
    def injects_broker(self) -> bool:
        return self.metadata.labels.get(INJECTION_LABEL) == "enabled"

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        out["metadata"].pop("namespace", None)
        return out


@register("", ("v1",), "configmaps")
class ConfigMap(Resource):
    """Knative's configuration (config-br-defaults, default-ch-webhook, config-features, ...),
    as Knative users write it; what each means here: rabbitmesh/config/knative.py."""

    data: dict[str, str] = Field(default_factory=dict)
    binary_data: dict[str, str] = Field(default_factory=dict, alias="binaryData")
    immutable: bool | None = None
    #: rabbitmesh/config/knative.py's parse of it, cached: read at every broker's reconcile.
    _parsed: Any = PrivateAttr(default=None)

    @field_validator("data", mode="before")
    @classmethod
    def _text_values(cls, v: Any) -> Any:
        # Kubernetes ConfigMap values are strings; YAML writes `retry: 3` or `on: true` as
        # numbers and booleans, which kubectl refuses. Take them as the text they stand for
        # rather than refuse a file a user copied from a blog.
        if isinstance(v, dict):
            return {
                k: (str(x).lower() if isinstance(x, bool) else str(x))
                if isinstance(x, (int, float, bool))
                else x
                for k, x in v.items()
            }
        return v

    # What it means here is parsed (and cached on it) by rabbitmesh/config/knative.py, which
    # also validates it where manifests are checked (rabbitmesh/config/checks.py).
