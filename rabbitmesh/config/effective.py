"""What is in force, and where it came from: ConfigMap, then environment variable, then default.

Order, and why: a knative-eventing ConfigMap wins over a RABBITMESH_* environment variable,
which wins over the built-in default. ConfigMaps live in the resource store, so every replica
reads the same value and a change applies to running replicas within a second (hot reload);
an environment variable is one process's start-up fallback, and replicas started with
different environments would otherwise disagree. So the ConfigMap a Knative user already has
is what they get, and RABBITMESH_* keeps meaning what it did for installs without one.

Reconcilers build an `Effective` for each reconcile (a few dictionary lookups: the ConfigMaps
are parsed once per version, rabbitmesh/resources/core.py) and report each value with its
source in the resource's `status.effectiveConfig`, which `rabbitmesh get KIND NAME -o yaml` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rabbitmesh.config.knative import (
    BR_DEFAULTS,
    CH_DEFAULTS,
    CLASS_ANNOTATION,
    DEFAULT_BROKER_CLASS,
    FEATURES,
    SYSTEM_NAMESPACE,
    BrokerDefault,
    BrokerDefaults,
    ChannelDefaults,
    Features,
    parsed,
)
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.core import ConfigMap
from rabbitmesh.resources.duck import DeliverySpec, KReference
from rabbitmesh.resources.messaging import DEFAULT_CHANNEL_KIND, ChannelTemplate
from rabbitmesh.settings import Settings

T = TypeVar("T")
Getter = Callable[[str, str, str], Resource | None]

BUILT_IN = "built-in default"

#: Feature flag -> (its RABBITMESH_* setting or None, the built-in value).
FEATURE_FALLBACKS: dict[str, tuple[str | None, str]] = {
    "eventtype-auto-create": ("eventtype_auto_create", "disabled"),
    # rabbitmesh has always honoured delivery.timeout and retryAfterMax: on by default (Knative's
    # own default for delivery-retryafter is disabled; set it in config-features to match).
    "delivery-timeout": (None, "enabled"),
    "delivery-retryafter": (None, "enabled"),
    "transport-encryption": (None, "disabled"),
    # The setting of the same meaning where the installed version has one
    # (RABBITMESH_CROSS_NAMESPACE_EVENT_LINKS is being added with the bridges, issue 16).
    "cross-namespace-event-links": ("cross_namespace_event_links", "disabled"),
    # Switched while running (rabbitmesh/server.py `_apply_features`).
    "authentication-oidc": ("authentication_oidc", "disabled"),
    "default-authorization-mode": ("default_authorization_mode", "allow-same-namespace"),
}


@dataclass(frozen=True)
class Value(Generic[T]):
    value: T
    source: str

    def as_status(self) -> dict[str, Any]:
        v: Any = self.value
        if hasattr(v, "dump"):
            v = v.dump()
        return {"value": v, "source": self.source}


def configmap_source(name: str, where: str = "") -> str:
    return f"ConfigMap {SYSTEM_NAMESPACE}/{name}" + (f" ({where})" if where else "")


def env_name(setting: str) -> str:
    return f"RABBITMESH_{setting.upper()}"


class Effective:
    """The configuration in force, read from the resources a reconcile sees (`get`)."""

    def __init__(self, settings: Settings, get: Getter) -> None:
        self.settings = settings
        self.get = get

    def _parsed(self, name: str) -> Any:
        cm = self.get("ConfigMap", SYSTEM_NAMESPACE, name)
        if not isinstance(cm, ConfigMap):
            return None
        try:
            return parsed(cm).value
        except FieldError:  # stored by an older version; its own status says why
            return None

    # --- brokers -------------------------------------------------------------------------

    def broker_entry(self, namespace: str) -> tuple[BrokerDefault | None, str]:
        defaults = self._parsed(BR_DEFAULTS)
        if not isinstance(defaults, BrokerDefaults):
            return None, ""
        entry, where = defaults.entry(namespace)
        return entry, configmap_source(BR_DEFAULTS, where)

    def broker_class(self, broker: Resource) -> Value[str]:
        annotated = broker.metadata.annotations.get(CLASS_ANNOTATION)
        if annotated:
            return Value(annotated, f"annotation {CLASS_ANNOTATION}")
        entry, source = self.broker_entry(broker.namespace)
        if entry is not None and entry.broker_class:
            return Value(entry.broker_class, source)
        return Value(DEFAULT_BROKER_CLASS, BUILT_IN)

    def broker_config(
        self, broker: Resource, own: KReference | None, broker_class: str
    ) -> Value[KReference | None]:
        """The broker's `spec.config`, else config-br-defaults' for its namespace and class."""
        if own is not None:
            return Value(own, "spec.config")
        entry, source = self.broker_entry(broker.namespace)
        if entry is not None:
            ref = entry.for_class(broker_class).config_ref()
            if ref is not None:
                return Value(ref, source)
        return Value(None, BUILT_IN)

    def broker_delivery(self, namespace: str, broker_class: str) -> Value[DeliverySpec | None]:
        """config-br-defaults' delivery for brokers of this namespace and class."""
        entry, source = self.broker_entry(namespace)
        if entry is not None:
            delivery = entry.for_class(broker_class).delivery
            if delivery is not None:
                return Value(delivery, source)
        return Value(None, BUILT_IN)

    # --- channels ------------------------------------------------------------------------

    def channel_template(self, namespace: str) -> Value[ChannelTemplate]:
        """The channel kind (and spec) of a Channel, Sequence or Parallel that names none."""
        defaults = self._parsed(CH_DEFAULTS)
        if isinstance(defaults, ChannelDefaults):
            entry, where = defaults.entry(namespace)
            if entry is not None:
                template = ChannelTemplate(
                    api_version=entry.api_version, kind=entry.kind, spec=entry.spec
                )
                return Value(template, configmap_source(CH_DEFAULTS, where))
        return Value(ChannelTemplate(kind=DEFAULT_CHANNEL_KIND), BUILT_IN)

    # --- config-features -----------------------------------------------------------------

    def feature(self, name: str) -> Value[str]:
        features = self._parsed(FEATURES)
        if isinstance(features, Features) and name in features.values:
            value = features.values[name]
            return Value("enabled" if value == "allowed" else value, configmap_source(FEATURES))
        setting, built_in = FEATURE_FALLBACKS.get(name, (None, "disabled"))
        if setting is None or setting not in type(self.settings).model_fields:
            return Value(built_in, BUILT_IN)
        current = getattr(self.settings, setting)
        on = current if isinstance(current, str) else "enabled" if current else "disabled"
        if setting in self.settings.model_fields_set:
            return Value(on, env_name(setting))
        return Value(on, BUILT_IN)

    def enabled(self, name: str) -> bool:
        return self.feature(name).value == "enabled"
