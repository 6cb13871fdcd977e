"""The knative-eventing ConfigMaps, parsed into typed values with errors naming key and field.

Knative reads its configuration from ConfigMaps in its system namespace (`knative-eventing`).
rabbitmesh accepts the same ConfigMaps as resources (kind ConfigMap, `v1`) and gives each key
the closest meaning it has on RabbitMQ:

- `config-br-defaults` / `default-br-config`: broker class, `spec.config` and `delivery` of
  brokers that set none (cluster default, per-namespace defaults, per-class `brokerClasses`);
- `default-ch-webhook` / `default-ch-config`: the channel kind (and its spec) of Channels,
  Sequences and Parallels that name none;
- `config-features`: the flags rabbitmesh has an equivalent for switch it; the others are
  accepted and reported as not applicable;
- every other ConfigMap (`kafka-broker-config`, `config-kafka-channel`, `config-logging`, ...)
  is accepted and reported as having no effect.

An invalid value or an unknown key is a FieldError (422 through the API, one line naming the
file at start-up); a Knative key that means nothing here is a warning in the ConfigMap's
status, not an error: a migrating user's files load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError, field_validator

from rabbitmesh.durations import parse_duration
from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.core import ConfigMap
from rabbitmesh.resources.duck import DeliverySpec, KReference
from rabbitmesh.resources.loader import ManifestError, load_documents
from rabbitmesh.resources.messaging import Channel

SYSTEM_NAMESPACE = "knative-eventing"
BR_DEFAULTS = "config-br-defaults"
BR_DEFAULTS_KEY = "default-br-config"
CH_DEFAULTS = "default-ch-webhook"
CH_DEFAULTS_KEY = "default-ch-config"
FEATURES = "config-features"
#: Knative ships its ConfigMaps with an `_example` key (documentation only); it ignores it.
EXAMPLE_KEY = "_example"

# --- broker classes ------------------------------------------------------------------------

CLASS_ANNOTATION = "eventing.knative.dev/broker.class"
#: Knative's built-in default when neither the broker nor config-br-defaults names a class.
DEFAULT_BROKER_CLASS = "MTChannelBasedBroker"
#: The classes rabbitmesh serves, each on RabbitMQ, and what that means for each.
BROKER_CLASSES: dict[str, str] = {
    "MTChannelBasedBroker": "Knative's channel-based broker",
    "Kafka": "Knative's Kafka broker",
    "KafkaNamespaced": "Knative's namespaced Kafka broker",
    "RabbitMQBroker": "eventing-rabbitmq's broker",
}


def class_message(broker_class: str) -> str:
    return (
        f"broker class {broker_class} ({BROKER_CLASSES[broker_class]}) is served by rabbitmesh "
        "on RabbitMQ: a topic exchange, a queue per trigger"
    )


def unknown_class_message(broker_class: str) -> str:
    return (
        f"broker class {broker_class!r} is not one rabbitmesh serves; it serves "
        + ", ".join(BROKER_CLASSES)
        + f" (annotation {CLASS_ANNOTATION}, or brokerClass in {SYSTEM_NAMESPACE}/{BR_DEFAULTS})"
    )


# --- channel kinds -------------------------------------------------------------------------

#: Channel kinds with a known spec; any other kind ending in `Channel` is accepted too, its
#: spec kept and reported as not applicable.
CHANNEL_SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "InMemoryChannel": ("delivery",),
    "Channel": ("delivery", "channelTemplate"),
    "KafkaChannel": ("delivery", "numPartitions", "replicationFactor", "retentionDuration"),
    "NatssChannel": ("delivery",),
}


def check_channel_spec(
    kind: str, spec: dict[str, Any] | None, path: str, kind_path: str = ""
) -> list[str]:
    """FieldError for an invalid spec of a channel kind; the warnings for keys that mean
    nothing on RabbitMQ (`replicationFactor`: RabbitMQ replicates quorum queues by itself)."""
    if not kind.endswith("Channel"):
        raise FieldError(
            kind_path or "kind",
            "must be a channel kind (InMemoryChannel, KafkaChannel, NatssChannel, ...), "
            f"got {kind!r}",
        )
    warnings: list[str] = []
    spec = spec or {}
    if not isinstance(spec, dict):
        raise FieldError(path, "must be a mapping")
    known = CHANNEL_SPEC_KEYS.get(kind)
    for key, value in spec.items():
        where = f"{path}.{key}"
        if known is None:
            if key != "delivery":
                warnings.append(
                    f"{where}: {kind} is served as a RabbitMQ fanout exchange; not applicable"
                )
            continue
        if key not in known:
            raise FieldError(where, f"unknown field for {kind} (known: {', '.join(known)})")
        if key in ("numPartitions", "replicationFactor"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FieldError(where, "must be a whole number of at least 1")
        if key == "retentionDuration":
            try:
                parse_duration(str(value))
            except ValueError as e:
                raise FieldError(where, str(e)) from None
            warnings.append(
                f"{where}: Kafka topic retention; not applicable "
                "(RabbitMQ keeps an event until it is delivered)"
            )
        if key == "replicationFactor":
            warnings.append(
                f"{where}: not applicable "
                "(RabbitMQ replicates quorum queues itself: RABBITMESH_QUEUE_TYPE)"
            )
        if key == "numPartitions":
            warnings.append(
                f"{where}: not applicable: rabbitmesh keeps a channel's order per "
                "subscription queue; "
                "partitions count only with per-key ordering"
            )
    if spec.get("delivery") is not None:
        try:
            DeliverySpec.model_validate(spec["delivery"])
        except ValidationError as e:
            raise _field_error(f"{path}.delivery", e) from None
    return warnings


def _field_error(prefix: str, e: ValidationError) -> FieldError:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return FieldError(f"{prefix}.{where}" if where else prefix, msg)


# --- config-br-defaults ----------------------------------------------------------------------


class BrokerConfigDefault(Model):
    """A broker's `spec.config` reference and `delivery`, as config-br-defaults writes them
    (the reference inline: `apiVersion`, `kind`, `name`, `namespace`)."""

    api_version: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    delivery: DeliverySpec | None = None

    def config_ref(self) -> KReference | None:
        if not self.kind or not self.name:
            return None
        return KReference(
            api_version=self.api_version, kind=self.kind, name=self.name, namespace=self.namespace
        )


class BrokerDefault(BrokerConfigDefault):
    """One `clusterDefault` or `namespaceDefaults` entry."""

    broker_class: str | None = None
    broker_classes: dict[str, BrokerConfigDefault] | None = None

    @field_validator("broker_class")
    @classmethod
    def _class(cls, v: str | None) -> str | None:
        if v is not None and v not in BROKER_CLASSES:
            raise ValueError(unknown_class_message(v))
        return v

    @field_validator("broker_classes")
    @classmethod
    def _classes(
        cls, v: dict[str, BrokerConfigDefault] | None
    ) -> dict[str, BrokerConfigDefault] | None:
        for name in v or {}:
            if name not in BROKER_CLASSES:
                raise ValueError(unknown_class_message(name))
        return v

    def for_class(self, broker_class: str) -> BrokerConfigDefault:
        """The config and delivery of this entry for brokers of `broker_class`."""
        per_class = (self.broker_classes or {}).get(broker_class)
        return per_class if per_class is not None else self


class BrokerDefaults(Model):
    cluster_default: BrokerDefault | None = None
    namespace_defaults: dict[str, BrokerDefault] = Field(default_factory=dict)

    def entry(self, namespace: str) -> tuple[BrokerDefault | None, str]:
        """The entry for `namespace` and where it is (`namespaceDefaults.ns` or
        `clusterDefault`); a namespace entry wins, as in Knative."""
        if namespace in self.namespace_defaults:
            return self.namespace_defaults[namespace], f"namespaceDefaults.{namespace}"
        return self.cluster_default, "clusterDefault"


# --- default-ch-webhook ----------------------------------------------------------------------


class ChannelDefault(Model):
    api_version: str | None = None
    kind: str
    spec: dict[str, Any] | None = None


class ChannelDefaults(Model):
    cluster_default: ChannelDefault | None = None
    namespace_defaults: dict[str, ChannelDefault] = Field(default_factory=dict)

    def entry(self, namespace: str) -> tuple[ChannelDefault | None, str]:
        if namespace in self.namespace_defaults:
            return self.namespace_defaults[namespace], f"namespaceDefaults.{namespace}"
        return self.cluster_default, "clusterDefault"


# --- config-features -------------------------------------------------------------------------

ON_OFF = ("enabled", "disabled", "allowed")


@dataclass(frozen=True)
class Flag:
    values: tuple[str, ...]
    #: What the flag does here; None: accepted, not applicable (`note` says why).
    switches: str | None
    note: str = ""


FLAGS: dict[str, Flag] = {
    "eventtype-auto-create": Flag(
        ON_OFF,
        "registers an EventType per (type, source) seen at an ingress "
        "(RABBITMESH_EVENTTYPE_AUTO_CREATE)",
    ),
    "delivery-timeout": Flag(
        ON_OFF, "delivery.timeout bounds each attempt; disabled: the field is ignored"
    ),
    "delivery-retryafter": Flag(
        ON_OFF, "delivery.retryAfterMax honours Retry-After; disabled: the field is ignored"
    ),
    "transport-encryption": Flag(
        ("disabled", "permissive", "strict"),
        "strict: triggers and subscriptions deliver to https:// URLs only (the others are not "
        "Ready); HTTPS for rabbitmesh's own ingress is RABBITMESH_TLS_CERT_FILE",
    ),
    "authentication-oidc": Flag(
        ON_OFF,
        "senders prove who they are with OIDC tokens, EventPolicies are enforced and "
        "rabbitmesh's own senders present tokens (RABBITMESH_AUTHENTICATION_OIDC); switched "
        "while running",
    ),
    "cross-namespace-event-links": Flag(
        ON_OFF,
        "a Subscription may name a channel of another namespace (`spec.channel.namespace`); "
        "disabled: refused (422 from the API, else not Ready: CrossNamespaceRefNotAllowed). A "
        "Trigger's broker stays in its namespace",
    ),
    "new-trigger-filters": Flag(ON_OFF, None, "spec.filters is always honoured"),
    "kreference-group": Flag(ON_OFF, None, "refs name kind and apiVersion"),
    "kreference-mapping": Flag(ON_OFF, None, "no config-kreference-mapping"),
    "new-apiserversource-filters": Flag(ON_OFF, None, "ApiServerSource filters are not supported"),
    "istio": Flag(ON_OFF, None, "no service mesh integration"),
    "eventtype-auto-create-ttl": Flag(
        (), None, "auto-created EventTypes live as long as their owner"
    ),
    "default-authorization-mode": Flag(
        ("allow-all", "allow-same-namespace", "deny-all"),
        "with authentication-oidc, what a target no EventPolicy applies to accepts "
        "(RABBITMESH_DEFAULT_AUTHORIZATION_MODE); switched while running",
    ),
    "sinkbinding-selection-mode": Flag(
        ("exclusion", "inclusion", "all"), None, "SinkBindings here name their subject"
    ),
    "cross-namespace-event-links-ttl": Flag((), None, ""),
}
#: Prefixes of flag families Knative reads (one key per node selector).
FLAG_PREFIXES = ("node-selector-", "apiserversources-nodeselector-")


@dataclass
class Features:
    #: flag -> value, for every flag the ConfigMap sets.
    values: dict[str, str] = field(default_factory=dict)


# --- the ConfigMaps ----------------------------------------------------------------------------

#: Knative and Knative-Kafka ConfigMaps accepted with no effect here, and why.
NO_EFFECT: dict[str, str] = {
    "kafka-broker-config": "Kafka topic and bootstrap settings; brokers here are exchanges",
    "config-kafka-channel": "KafkaChannel settings; channels here are RabbitMQ exchanges",
    "config-kafka": "Kafka settings",
    "config-kafka-features": "Kafka features",
    "config-kafka-broker-data-plane": "Kafka data plane",
    "config-kafka-channel-data-plane": "Kafka data plane",
    "config-kafka-source-defaults": "KafkaSource defaults",
    "config-kafka-scheduler": "Kafka scheduling",
    "config-kafka-descheduler": "Kafka scheduling",
    "config-kafka-autoscaler": "Kafka autoscaling",
    "config-kafka-leader-election": "Kafka leader election",
    "kafka-config-logging": "Kafka data plane logging; use RABBITMESH_LOG_LEVEL",
    "config-logging": "use RABBITMESH_LOG_LEVEL and RABBITMESH_LOG_FORMAT",
    "config-observability": "rabbitmesh always serves /metrics",
    "config-tracing": "tracing is configured with the OTEL_* environment variables",
    "config-leader-election": "rabbitmesh's replicas need no leader election",
    "config-ping-defaults": "a PingSource's data is limited by RABBITMESH_MAX_EVENT_BYTES",
    "config-sugar": "label a Namespace eventing.knative.dev/injection: enabled instead",
    "config-imc-event-dispatcher": "use RABBITMESH_CONCURRENCY and RABBITMESH_PREFETCH",
    "config-kreference-mapping": "not supported",
    "config-natss": "NATS settings; channels here are RabbitMQ exchanges",
    "config-natss-channel": "NATS settings; channels here are RabbitMQ exchanges",
}


@dataclass
class Parsed:
    """What one ConfigMap means here."""

    #: "br-defaults", "ch-defaults", "features", or "none".
    role: str
    value: BrokerDefaults | ChannelDefaults | Features | None = None
    warnings: list[str] = field(default_factory=list)
    #: Why it has no effect (role "none").
    why: str = ""


def parse(namespace: str, name: str, data: dict[str, str]) -> Parsed:
    """What ConfigMap `namespace/name` means here; FieldError (path `data.<key>...`) when a key
    rabbitmesh reads is invalid or unknown."""
    if namespace != SYSTEM_NAMESPACE:
        return Parsed(
            "none",
            why=f"rabbitmesh reads ConfigMaps in {SYSTEM_NAMESPACE} only (a Broker's "
            "spec.config may still name this one)",
        )
    if name == BR_DEFAULTS:
        raw = _one_key(data, BR_DEFAULTS_KEY)
        value = BrokerDefaults() if raw is None else _model(BrokerDefaults, raw, BR_DEFAULTS_KEY)
        return Parsed("br-defaults", value, _br_warnings(value))
    if name == CH_DEFAULTS:
        raw = _one_key(data, CH_DEFAULTS_KEY)
        value = ChannelDefaults() if raw is None else _model(ChannelDefaults, raw, CH_DEFAULTS_KEY)
        warnings: list[str] = []
        entries = [("clusterDefault", value.cluster_default)] + [
            (f"namespaceDefaults.{ns}", e) for ns, e in value.namespace_defaults.items()
        ]
        for where, entry in entries:
            if entry is not None:
                at = f"data.{CH_DEFAULTS_KEY}.{where}"
                warnings += check_channel_spec(entry.kind, entry.spec, f"{at}.spec", f"{at}.kind")
        return Parsed("ch-defaults", value, warnings)
    if name == FEATURES:
        return _features(data)
    return Parsed(
        "none",
        why=NO_EFFECT.get(name, "rabbitmesh does not read this ConfigMap"),
    )


def _one_key(data: dict[str, str], key: str) -> str | None:
    for k in data:
        if k not in (key, EXAMPLE_KEY):
            raise FieldError(f"data.{k}", f"unknown key (this ConfigMap has {key!r})")
    return data.get(key)


def _model(model: type[Model], raw: str, key: str) -> Any:
    try:
        docs = load_documents(raw, key)
    except ManifestError as e:
        raise FieldError(f"data.{key}", e.message) from None
    doc = docs[0] if docs else None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or len(docs) > 1:
        raise FieldError(f"data.{key}", "must be one YAML mapping")
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        raise _field_error(f"data.{key}", e) from None


def _br_warnings(value: BrokerDefaults) -> list[str]:
    out: list[str] = []
    entries = [("clusterDefault", value.cluster_default)] + [
        (f"namespaceDefaults.{ns}", e) for ns, e in value.namespace_defaults.items()
    ]
    for where, entry in entries:
        if entry is None:
            continue
        configs = [(where, entry)] + [
            (f"{where}.brokerClasses.{c}", e) for c, e in (entry.broker_classes or {}).items()
        ]
        for at, cfg in configs:
            ref = cfg.config_ref()
            if ref is not None and ref.kind not in ("RabbitmqBrokerConfig", "RabbitmqCluster"):
                out.append(
                    f"data.{BR_DEFAULTS_KEY}.{at}: {ref.kind} {ref.name} is recorded as the "
                    "brokers' spec.config; it has no effect on RabbitMQ"
                )
    return out


def _features(data: dict[str, str]) -> Parsed:
    out = Features()
    warnings: list[str] = []
    for key, raw in data.items():
        if key == EXAMPLE_KEY:
            continue
        path = f"data.{key}"
        value = str(raw).strip()
        flag = FLAGS.get(key)
        if flag is None:
            if key.startswith(FLAG_PREFIXES):
                warnings.append(f"{path}: Kubernetes node selection; not applicable")
                continue
            raise FieldError(path, f"unknown feature flag (known: {', '.join(sorted(FLAGS))})")
        if flag.values and value not in flag.values:
            raise FieldError(path, f"must be one of {', '.join(flag.values)}, got {value!r}")
        out.values[key] = value
        if flag.switches is None:
            warnings.append(
                f"{path}: accepted, not applicable here ({flag.note})".replace(" ()", "")
            )
    return Parsed("features", out, warnings)


def changed_namespaces(old: Parsed | None, new: Parsed | None) -> set[str] | None:
    """The namespaces whose defaults differ between two versions of config-br-defaults or
    default-ch-webhook; None when every namespace may be affected (a cluster default
    changed, or it is another ConfigMap)."""
    a = old.value if old is not None else None
    b = new.value if new is not None else None
    defaults = (BrokerDefaults, ChannelDefaults)
    if not isinstance(a, defaults) or not isinstance(b, defaults) or type(a) is not type(b):
        return None
    if a.cluster_default != b.cluster_default:
        return None
    names = set(a.namespace_defaults) | set(b.namespace_defaults)
    return {ns for ns in names if a.namespace_defaults.get(ns) != b.namespace_defaults.get(ns)}


def parsed(cm: ConfigMap) -> Parsed:
    """What `cm` means here, parsed once per object (reconcilers read it at every broker's
    and channel's reconcile). Raises FieldError when it is invalid."""
    if cm._parsed is None:
        cm._parsed = parse(cm.namespace, cm.name, cm.data)
    result: Parsed = cm._parsed
    return result


def channel_warnings(channel: Channel) -> list[str]:
    """FieldError for a spec field the channel's kind does not have; the warnings for the
    fields accepted with no meaning here (numPartitions, replicationFactor, ...)."""
    own = {k: v for k, v in channel.spec.dump().items() if k not in ("channelTemplate", "delivery")}
    warnings = check_channel_spec(channel.kind, own, "spec") if own else []
    t = channel.spec.channel_template
    if t is not None:
        warnings += check_channel_spec(
            t.kind, t.spec, "spec.channelTemplate.spec", "spec.channelTemplate.kind"
        )
    return warnings


def check_resource(res: Resource) -> None:
    """The checks of what a resource means for the Knative configuration (FieldError):
    a ConfigMap's keys, a channel kind's spec."""
    if isinstance(res, ConfigMap):
        parsed(res)
    elif isinstance(res, Channel):
        channel_warnings(res)
