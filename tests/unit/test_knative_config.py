# ruff: noqa: E501  (manifests written as users write them, one mapping a line)
"""Knative's ConfigMaps and eventing-rabbitmq's configuration, the pure parts (issue 20)."""

from __future__ import annotations

import pytest

from rabbitmesh.amqp.clusters import check_amqp_url, vhost_of, with_vhost
from rabbitmesh.config.brokers import BrokerConfigProblem, broker_setup
from rabbitmesh.config.effective import BUILT_IN, Effective
from rabbitmesh.config.knative import changed_namespaces, check_resource, parse
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.loader import ManifestError, load_text
from rabbitmesh.settings import Settings
from rabbitmesh.store.dependencies import DependencyIndex

AMQP = "amqp://guest:guest@localhost:5672/"


def resources(text: str) -> dict[tuple[str, str, str], Resource]:
    return {r.key: r for r in load_text(text, "test")}


def effective(text: str, **settings: object) -> Effective:
    found = resources(text)
    return Effective(
        Settings(amqp_url=AMQP, **settings),  # type: ignore[arg-type]
        lambda k, ns, n: found.get((k, ns, n)),
    )


BR_DEFAULTS = """
apiVersion: v1
kind: ConfigMap
metadata: {name: config-br-defaults, namespace: knative-eventing}
data:
  _example: "ignored, as Knative ignores it"
  default-br-config: |
    clusterDefault:
      brokerClass: Kafka
      apiVersion: v1
      kind: ConfigMap
      name: kafka-broker-config
      namespace: knative-eventing
      delivery: {retry: 2}
    namespaceDefaults:
      ns1:
        brokerClass: RabbitMQBroker
        brokerClasses:
          RabbitMQBroker:
            apiVersion: eventing.knative.dev/v1alpha1
            kind: RabbitmqBrokerConfig
            name: cfg
            delivery: {retry: 7}
"""


def test_broker_class_annotation_then_namespace_then_cluster_then_built_in():
    eff = effective(
        BR_DEFAULTS
        + """
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: a, namespace: ns1, annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: b, namespace: ns1}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: c, namespace: ns2}
"""
    )
    get = eff.get
    a, b, c = (get("Broker", ns, n) for ns, n in (("ns1", "a"), ("ns1", "b"), ("ns2", "c")))
    assert eff.broker_class(a).value == "MTChannelBasedBroker"
    assert eff.broker_class(a).source == "annotation eventing.knative.dev/broker.class"
    assert eff.broker_class(b).value == "RabbitMQBroker"
    assert "namespaceDefaults.ns1" in eff.broker_class(b).source
    assert eff.broker_class(c).value == "Kafka"
    assert "clusterDefault" in eff.broker_class(c).source
    # brokerClasses: the per-class entry gives config and delivery.
    ref = eff.broker_config(b, None, "RabbitMQBroker").value
    assert ref is not None and ref.kind == "RabbitmqBrokerConfig" and ref.name == "cfg"
    assert eff.broker_delivery("ns1", "RabbitMQBroker").value.retry == 7  # type: ignore[union-attr]
    assert eff.broker_delivery("ns2", "Kafka").value.retry == 2  # type: ignore[union-attr]
    assert effective("").broker_class(c).source == BUILT_IN


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (
            {"default-br-config": "clusterDefault: {brokerClass: Foo}"},
            "data.default-br-config.clusterDefault.brokerClass",
        ),
        (
            {"default-br-config": "clusterDefault: {delivery: {retry: -1}}"},
            "data.default-br-config.clusterDefault.delivery.retry",
        ),
        (
            {"default-br-config": "namespaceDefaults: {ns: {nme: x}}"},
            "data.default-br-config.namespaceDefaults.ns.nme",
        ),
        ({"default-br-config": "- a list"}, "data.default-br-config"),
        ({"default-br-config": "a: [unclosed"}, "data.default-br-config"),
        ({"default-br-confg": "x"}, "data.default-br-confg"),
    ],
)
def test_invalid_broker_defaults_name_the_field(data, field):
    with pytest.raises(FieldError) as e:
        parse("knative-eventing", "config-br-defaults", data)
    assert e.value.path == field


def test_channel_defaults_validate_the_kind_and_its_spec():
    ok = parse(
        "knative-eventing",
        "default-ch-webhook",
        {"default-ch-config": "clusterDefault: {kind: KafkaChannel, spec: {numPartitions: 3}}"},
    )
    assert any("numPartitions" in w for w in ok.warnings)
    with pytest.raises(FieldError) as e:
        parse(
            "knative-eventing",
            "default-ch-webhook",
            {"default-ch-config": "clusterDefault: {kind: KafkaChannel, spec: {numPartitions: 0}}"},
        )
    assert e.value.path == "data.default-ch-config.clusterDefault.spec.numPartitions"
    with pytest.raises(FieldError) as e:
        parse(
            "knative-eventing",
            "default-ch-webhook",
            {"default-ch-config": "namespaceDefaults: {ns: {kind: Service}}"},
        )
    assert e.value.path == "data.default-ch-config.namespaceDefaults.ns.kind"


def test_feature_flags():
    parsed = parse(
        "knative-eventing",
        "config-features",
        {
            "eventtype-auto-create": "allowed",
            "istio": "enabled",
            "node-selector-gpu": "gpu=true",
            "_example": "x",
        },
    )
    assert parsed.value.values["eventtype-auto-create"] == "allowed"  # type: ignore[union-attr]
    assert any("istio" in w for w in parsed.warnings)
    assert not any("authentication-oidc" in w for w in parsed.warnings)
    assert any("node-selector-gpu" in w for w in parsed.warnings)
    for data, field in (
        ({"no-such-flag": "enabled"}, "data.no-such-flag"),
        ({"transport-encryption": "enabled"}, "data.transport-encryption"),
    ):
        with pytest.raises(FieldError) as e:
            parse("knative-eventing", "config-features", data)
        assert e.value.path == field


def test_other_configmaps_are_accepted_with_no_effect():
    assert parse("knative-eventing", "kafka-broker-config", {"x": "y"}).role == "none"
    assert "Kafka" in parse("knative-eventing", "kafka-broker-config", {}).why
    assert parse("default", "config-br-defaults", {"anything": "x"}).role == "none"


def test_configmap_values_written_as_numbers_or_booleans_are_text():
    (cm,) = load_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: 3, b: true}\n",
        "t",
        check_resource,
    )
    assert cm.data == {"a": "3", "b": "true"}  # type: ignore[attr-defined]


def test_invalid_configmap_is_a_manifest_error_naming_the_field():
    with pytest.raises(ManifestError) as e:
        load_text(
            "apiVersion: v1\nkind: ConfigMap\n"
            "metadata: {name: config-features, namespace: knative-eventing}\n"
            "data: {delivery-timeout: sometimes}\n",
            "f.yaml",
            check_resource,
        )
    assert e.value.field == "data.delivery-timeout"


FEATURES_ON = """
apiVersion: v1
kind: ConfigMap
metadata: {name: config-features, namespace: knative-eventing}
data: {eventtype-auto-create: disabled}
"""


def test_feature_order_configmap_then_environment_then_built_in():
    assert effective("").feature("eventtype-auto-create").source == BUILT_IN
    env = effective("", eventtype_auto_create=True).feature("eventtype-auto-create")
    assert (env.value, env.source) == ("enabled", "RABBITMESH_EVENTTYPE_AUTO_CREATE")
    cm = effective(FEATURES_ON, eventtype_auto_create=True).feature("eventtype-auto-create")
    assert cm.value == "disabled" and cm.source.startswith("ConfigMap knative-eventing/")
    assert effective("").feature("delivery-timeout").value == "enabled"


def test_changed_namespaces_narrows_a_defaults_change():
    def br(text: str):  # noqa: ANN202
        return parse("knative-eventing", "config-br-defaults", {"default-br-config": text})

    a = br("namespaceDefaults: {ns1: {brokerClass: Kafka}, ns2: {brokerClass: Kafka}}")
    b = br("namespaceDefaults: {ns1: {brokerClass: RabbitMQBroker}, ns2: {brokerClass: Kafka}}")
    assert changed_namespaces(a, b) == {"ns1"}
    c = br("clusterDefault: {brokerClass: Kafka}")
    assert changed_namespaces(a, c) is None
    assert changed_namespaces(None, a) is None


PLACED = """
apiVersion: v1
kind: Secret
metadata: {name: conn, namespace: knative-eventing}
stringData: {uri: "amqp://other:5672/", username: u, password: "p@ss"}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: RabbitmqBrokerConfig
metadata: {name: cfg, namespace: knative-eventing}
spec:
  rabbitmqClusterReference: {connectionSecret: {name: conn}}
  queueType: classic
  vhost: tenant/a
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: b}
spec:
  config: {apiVersion: eventing.knative.dev/v1alpha1, kind: RabbitmqBrokerConfig, name: cfg, namespace: knative-eventing}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: lost}
spec:
  config: {apiVersion: eventing.knative.dev/v1alpha1, kind: RabbitmqBrokerConfig, name: nope}
"""


def test_broker_placement_from_a_rabbitmq_broker_config():
    eff = effective(PLACED, queue_type="quorum")
    setup = broker_setup(eff, eff.get("Broker", "default", "b"))  # type: ignore[arg-type]
    assert setup.placement.url == "amqp://u:p%40ss@other:5672/tenant%2Fa"
    assert setup.placement.queue_type == "classic"
    assert "tenant/a" in setup.placement.where and "p@ss" not in setup.placement.where
    with pytest.raises(BrokerConfigProblem) as e:
        broker_setup(eff, eff.get("Broker", "default", "lost"))  # type: ignore[arg-type]
    assert e.value.reason == "BrokerConfigNotFound"


def test_rabbitmq_broker_config_validation():
    with pytest.raises(ManifestError) as e:
        load_text(
            "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\n"
            "metadata: {name: c}\nspec:\n  rabbitmqClusterReference:\n"
            "    name: r\n    connectionSecret: {name: s}\n",
            "t",
        )
    assert e.value.field == "spec.rabbitmqClusterReference.connectionSecret"
    with pytest.raises(ManifestError) as e:
        load_text(
            "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\n"
            "metadata: {name: c}\nspec: {queueType: stream}\n",
            "t",
        )
    assert e.value.field == "spec.queueType"


def test_urls():
    assert with_vhost("amqp://u:p@h:1/", "v/1") == "amqp://u:p@h:1/v%2F1"
    assert vhost_of("amqp://h/v%2F1") == "v/1" and vhost_of("amqp://h/") == "/"
    assert check_amqp_url("amqp://h/") is None
    assert "amqp" in (check_amqp_url("https://h:15672/") or "")


def test_a_configuration_change_reaches_what_it_affects_and_no_more():
    text = (
        PLACED
        + """
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec: {broker: b, subscriber: {uri: "http://x/"}}
---
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {name: ch}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {name: s}
spec: {channel: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: ch}, subscriber: {uri: "http://x/"}}
"""
    )
    index = DependencyIndex()
    for key, res in resources(text).items():
        index.set(key, res)
    broker, trigger = ("Broker", "default", "b"), ("Trigger", "default", "t")
    cfg = ("RabbitmqBrokerConfig", "knative-eventing", "cfg")
    assert {broker, trigger} <= index.affected(cfg)
    assert {cfg, broker, trigger} <= index.affected(("Secret", "knative-eventing", "conn"))
    ch_defaults = index.affected(("ConfigMap", "knative-eventing", "default-ch-webhook"))
    assert ("Channel", "default", "ch") in ch_defaults
    assert ("Subscription", "default", "s") in ch_defaults and broker not in ch_defaults
    # A plain Secret of the namespace reaches the brokers reading it, not their triggers.
    assert trigger not in index.affected(("Secret", "default", "other"))


def test_describe_shows_each_value_in_force_and_its_source():
    from rabbitmesh.cli.output import describe

    text = describe(
        {
            "metadata": {"name": "b", "namespace": "ns1"},
            "status": {
                "effectiveConfig": {
                    "brokerClass": {
                        "value": "Kafka",
                        "source": "ConfigMap knative-eventing/config-br-defaults (clusterDefault)",
                    },
                    "delivery": {"value": {"retry": 2}, "source": "built-in default"},
                },
                "warnings": ["spec.numPartitions: not applicable"],
            },
        },
        [],
    )
    assert (
        "brokerClass:" in text and "Kafka  (ConfigMap knative-eventing/config-br-defaults" in text
    )
    assert '{"retry":2}  (built-in default)' in text
    assert "Warning:      spec.numPartitions: not applicable" in text
