"""A Broker's configuration in force: class, `spec.config`, placement, default delivery.

Placement is where the broker's exchange and its triggers' queues live: which RabbitMQ
(RABBITMESH_AMQP_URL, or the `uri` of a RabbitmqBrokerConfig's connectionSecret), which
vhost (RabbitmqBrokerConfig `spec.vhost`), and which queue type (`spec.queueType`, else
RABBITMESH_QUEUE_TYPE). A platform spreads brokers over several RabbitMQ clusters this way.

RabbitMQ cannot change a queue's type, nor move a queue and its events to another vhost, so
a broker keeps the placement it was first reconciled with while it has triggers: a change is
refused, as eventing-rabbitmq makes RabbitmqBrokerConfig immutable: by the admin API (422,
rabbitmesh/config/admission.py) and, for the config dir, by the reconciler (the broker keeps
its placement; condition `ConfigApplied: False`). Delete the triggers (or the broker) to move
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rabbitmesh.amqp.clusters import check_amqp_url, vhost_of, with_vhost
from rabbitmesh.amqp.topology import QueueType
from rabbitmesh.config.effective import BUILT_IN, Effective, Value, env_name
from rabbitmesh.config.knative import BROKER_CLASSES, SYSTEM_NAMESPACE
from rabbitmesh.resources.core import ConfigMap, Secret
from rabbitmesh.resources.duck import DeliverySpec, KReference
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.rabbitmq import RabbitmqBrokerConfig

BROKER_CONFIG_KIND = "RabbitmqBrokerConfig"
#: eventing-rabbitmq's older `spec.config`: a RabbitmqCluster of the cluster operator.
RABBITMQ_CLUSTER_KIND = "RabbitmqCluster"
#: Keys of a connection Secret (eventing-rabbitmq's, and the topology operator's).
URI_KEY, USERNAME_KEY, PASSWORD_KEY = "uri", "username", "password"


class BrokerConfigProblem(Exception):
    """The broker cannot be placed: (reason, message) for its Ready condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Placement:
    #: None: RABBITMESH_AMQP_URL itself.
    url: str | None
    queue_type: QueueType
    #: Human-readable: "RABBITMESH_AMQP_URL", "vhost 'x' of RABBITMESH_AMQP_URL", ...
    where: str

    def same_place(self, other: Placement) -> bool:
        return self.url == other.url and self.queue_type == other.queue_type


@dataclass
class BrokerSetup:
    broker_class: Value[str]
    config: Value[KReference | None]
    placement: Placement
    placement_source: str
    queue_type_source: str
    delivery_default: Value[DeliverySpec | None]
    notes: list[str] = field(default_factory=list)
    #: The placement asked for was refused (the broker keeps the one it has).
    refused: bool = False

    def status(self) -> dict[str, Any]:
        """`status.effectiveConfig`: each value in force with where it came from."""
        ref = self.config.value
        return {
            "brokerClass": self.broker_class.as_status(),
            "config": {
                "value": None
                if ref is None
                else f"{ref.kind} {ref.namespace + '/' if ref.namespace else ''}{ref.name}",
                "source": self.config.source,
            },
            "rabbitmq": {"value": self.placement.where, "source": self.placement_source},
            "queueType": {"value": self.placement.queue_type, "source": self.queue_type_source},
            "delivery": self.delivery_default.as_status()
            if self.delivery_default.value is not None
            else {"value": None, "source": "RABBITMESH_DEFAULT_* settings"},
        }


def broker_setup(eff: Effective, broker: Broker) -> BrokerSetup:
    """What is in force for `broker`; BrokerConfigProblem when it cannot be served."""
    cls = eff.broker_class(broker)
    if cls.value not in BROKER_CLASSES:
        from rabbitmesh.config.knative import unknown_class_message

        raise BrokerConfigProblem("UnknownBrokerClass", unknown_class_message(cls.value))
    config = eff.broker_config(broker, broker.spec.config, cls.value)
    delivery = eff.broker_delivery(broker.namespace, cls.value)
    settings = eff.settings
    qt_source = env_name("queue_type") if "queue_type" in settings.model_fields_set else BUILT_IN
    default_place = Placement(None, settings.queue_type, "RABBITMESH_AMQP_URL")
    ref = config.value
    notes: list[str] = []
    if ref is None:
        return BrokerSetup(cls, config, default_place, BUILT_IN, qt_source, delivery)
    if ref.kind == RABBITMQ_CLUSTER_KIND:
        notes.append(
            f"spec.config RabbitmqCluster {ref.name}: the RabbitMQ rabbitmesh runs on "
            "(RABBITMESH_AMQP_URL); name another one with a RabbitmqBrokerConfig's "
            "connectionSecret"
        )
        return BrokerSetup(cls, config, default_place, config.source, qt_source, delivery, notes)
    if ref.kind != BROKER_CONFIG_KIND:
        ns = ref.namespace or broker.namespace
        if ref.kind == "ConfigMap" and not isinstance(
            eff.get("ConfigMap", ns, ref.name), ConfigMap
        ):
            notes.append(f"spec.config ConfigMap {ns}/{ref.name} does not exist")
        notes.append(
            f"spec.config {ref.kind} {ref.name}: {cls.value} broker settings, no effect on RabbitMQ"
        )
        return BrokerSetup(cls, config, default_place, BUILT_IN, qt_source, delivery, notes)
    ns = ref.namespace or broker.namespace
    cfg = eff.get(BROKER_CONFIG_KIND, ns, ref.name)
    if not isinstance(cfg, RabbitmqBrokerConfig):
        raise BrokerConfigProblem(
            "BrokerConfigNotFound",
            f"RabbitmqBrokerConfig {ns}/{ref.name} ({config.source}) does not exist",
        )
    url = settings.amqp_url
    where = "RABBITMESH_AMQP_URL"
    cluster = cfg.spec.rabbitmq_cluster_reference
    if cluster is not None and cluster.connection_secret is not None:
        url = _secret_url(eff, cfg, cluster.connection_secret.name)
        where = f"Secret {cfg.namespace}/{cluster.connection_secret.name}"
    if cfg.spec.vhost:
        url = with_vhost(url, cfg.spec.vhost)
        where = f"vhost {cfg.spec.vhost!r} of {where}"
    elif where != "RABBITMESH_AMQP_URL":
        where = f"vhost {vhost_of(url)!r} of {where}"
    source = f"RabbitmqBrokerConfig {cfg.namespace}/{cfg.name} ({config.source})"
    placement = Placement(None if url == settings.amqp_url else url, cfg.spec.queue_type, where)
    return BrokerSetup(cls, config, placement, source, source, delivery, notes)


def _secret_url(eff: Effective, cfg: RabbitmqBrokerConfig, name: str) -> str:
    secret = eff.get("Secret", cfg.namespace, name)
    path = "spec.rabbitmqClusterReference.connectionSecret"
    if not isinstance(secret, Secret):
        raise BrokerConfigProblem(
            "SecretNotFound",
            f"Secret {cfg.namespace}/{name} ({BROKER_CONFIG_KIND} {cfg.name} {path}) "
            "does not exist",
        )
    uri = secret.value(URI_KEY)
    if not uri:
        raise BrokerConfigProblem(
            "InvalidConnectionSecret", f"Secret {cfg.namespace}/{name} has no key {URI_KEY!r}"
        )
    why = check_amqp_url(uri)
    if why is not None:  # the value itself is a secret: never repeated
        raise BrokerConfigProblem(
            "InvalidConnectionSecret", f"Secret {cfg.namespace}/{name} key {URI_KEY!r}: {why}"
        )
    user, password = secret.value(USERNAME_KEY), secret.value(PASSWORD_KEY)
    if user and password and "@" not in uri.split("://", 1)[1].split("/", 1)[0]:
        from urllib.parse import quote

        scheme, rest = uri.split("://", 1)
        uri = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
    return uri


__all__ = ["SYSTEM_NAMESPACE", "BrokerConfigProblem", "BrokerSetup", "Placement", "broker_setup"]
