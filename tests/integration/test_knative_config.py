# ruff: noqa: E501  (manifests written as users write them, one mapping a line)
"""Configuration as Knative and eventing-rabbitmq users write it (issue 20), end to end:
ConfigMaps, broker classes, RabbitmqBrokerConfig (another vhost, classic queues), the
parallelism annotation, KafkaChannel; checked in RabbitMQ itself where it matters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli import rabbitmesh
from tests.support.api import call, ready
from tests.support.config import reapply
from tests.support.events import post_binary
from tests.support.manifests import (
    broker_and_trigger,
    broker_manifest,
    documents,
    trigger_manifest,
)
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.rabbit import rabbitmqctl
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BROKERS = "/apis/eventing.knative.dev/v1/namespaces/{ns}/brokers/{name}"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/{ns}/triggers/{name}"
CHANNELS = "/apis/messaging.knative.dev/v1/namespaces/{ns}/channels/{name}"
CONFIGMAPS = "/api/v1/namespaces/knative-eventing/configmaps"


def queues(vhost: str) -> dict[str, str]:
    """name -> type of every queue in `vhost`, as RabbitMQ itself reports them."""
    out = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "type")
    rows = (line.split("\t") for line in out.splitlines() if line.strip())
    return {name.strip(): kind.strip() for name, kind in rows}


@pytest.fixture
def vhost(prefix):
    """A vhost of this test's own, guest allowed, deleted afterwards (list it before
    start_mesh in a test's arguments, so the mesh stops first)."""
    name = f"{prefix}-v2"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


async def get(mesh, path: str, **kw: str) -> dict:  # noqa: ANN001
    status, body = await call("GET", mesh.url + path.format(**kw))
    assert status == 200, body
    return body


# --- the article's Kafka section ---------------------------------------------------------------


async def test_article_kafka_section_loads_unchanged_and_works(tmp_path, prefix, make_sink):
    """config/examples/knative/kafka.yaml through a real `rabbitmesh run`: every document
    loads, the Kafka broker serves its trigger, the KafkaChannel its subscription, and the
    Kafka-only settings are reported as having no effect."""
    sink = await make_sink()
    write_manifests(tmp_path / "config", (REPO / "config/examples/knative/kafka.yaml").read_text())
    mesh = await MeshProcess(
        tmp_path / "config", prefix, RABBITMESH_SERVICE_URL_TEMPLATE=sink.url
    ).start()
    try:
        broker = await get(mesh, BROKERS, ns="default", name="kafka-broker")
        assert ready(broker) == ("True", "BrokerReady")
        cond = next(c for c in broker["status"]["conditions"] if c["type"] == "Ready")
        assert "Kafka" in cond["message"] and "RabbitMQ" in cond["message"]
        eff = broker["status"]["effectiveConfig"]
        assert eff["brokerClass"] == {
            "value": "Kafka",
            "source": "annotation eventing.knative.dev/broker.class",
        }
        assert eff["config"]["source"] == "spec.config"
        status, _ = await post_binary(mesh.url + "/default/kafka-broker", "com.hj.kafka", id_="k1")
        assert status == 202
        (got,) = await sink.wait_for(1)
        assert got.headers["ce-id"] == "k1"

        status, _ = await post_binary(mesh.url + "/channels/default/kafka-channel", id_="c1")
        assert status == 202
        await sink.wait_for(2)
        assert sink.ids() == ["k1", "c1"]
        channel = await get(mesh, CHANNELS, ns="default", name="kafka-channel")
        assert channel["status"]["channel"]["kind"] == "KafkaChannel"
        assert any("numPartitions" in w for w in channel["status"]["warnings"])

        status, cm = await call("GET", mesh.url + CONFIGMAPS + "/kafka-broker-config")
        assert status == 200 and ready(cm) == ("True", "NoEffect")
        status, cm = await call("GET", mesh.url + CONFIGMAPS + "/config-br-defaults")
        assert ready(cm) == ("True", "ConfigApplied")

        # What a user sees: which value is in force, and where it came from.
        run = await rabbitmesh("broker", "describe", "kafka-broker", server=mesh.url)
        assert run.code == 0, run
        assert "Config in force:" in run.out
        assert "Kafka  (annotation eventing.knative.dev/broker.class)" in run.out
        run = await rabbitmesh(
            "get", "configmaps", "-n", "knative-eventing", "-o", "yaml", server=mesh.url
        )
        assert run.code == 0 and "kafka-broker-config" in run.out and "NoEffect" in run.out
    finally:
        await mesh.stop()


async def test_defaults_from_configmaps_apply_to_brokers_and_channels_that_name_none(start_mesh):
    mesh = await start_mesh(
        """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: config-br-defaults, namespace: knative-eventing}
        data:
          default-br-config: |
            clusterDefault: {brokerClass: MTChannelBasedBroker}
            namespaceDefaults:
              ns1: {brokerClass: RabbitMQBroker}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: default-ch-webhook, namespace: knative-eventing}
        data:
          default-ch-config: |
            clusterDefault: {apiVersion: messaging.knative.dev/v1beta1, kind: KafkaChannel}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: b, namespace: ns1}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: b, namespace: ns2}
        ---
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {name: ch}
        ---
        apiVersion: flows.knative.dev/v1
        kind: Sequence
        metadata: {name: seq}
        spec: {steps: [{uri: "http://127.0.0.1:9/"}]}
        """
    )
    seq = await get(mesh, "/apis/flows.knative.dev/v1/namespaces/default/sequences/seq")
    assert seq["status"]["channelStatuses"][0]["channel"]["kind"] == "KafkaChannel"
    b1 = await get(mesh, BROKERS, ns="ns1", name="b")
    assert b1["status"]["effectiveConfig"]["brokerClass"] == {
        "value": "RabbitMQBroker",
        "source": "ConfigMap knative-eventing/config-br-defaults (namespaceDefaults.ns1)",
    }
    b2 = await get(mesh, BROKERS, ns="ns2", name="b")
    assert b2["status"]["effectiveConfig"]["brokerClass"]["value"] == "MTChannelBasedBroker"
    ch = await get(mesh, CHANNELS, ns="default", name="ch")
    assert ch["status"]["channel"]["kind"] == "KafkaChannel"
    assert ch["status"]["effectiveConfig"]["channelTemplate"]["source"].startswith(
        "ConfigMap knative-eventing/default-ch-webhook"
    )

    # Hot reload, and only what it affects: a change of ns1's defaults reconciles ns1's
    # broker, not ns2's.
    counts = mesh.server.controller.counts
    before_ns2 = counts[("Broker", "ns2", "b")]
    before_ns1 = counts[("Broker", "ns1", "b")]
    await reapply(
        mesh,
        (
            (Path(mesh.settings.config_dir) / "manifests.yaml")
            .read_text()
            .replace("ns1: {brokerClass: RabbitMQBroker}", "ns1: {brokerClass: Kafka}")
        ),
    )
    b1 = await get(mesh, BROKERS, ns="ns1", name="b")
    assert b1["status"]["effectiveConfig"]["brokerClass"]["value"] == "Kafka"
    assert counts[("Broker", "ns1", "b")] == before_ns1 + 1
    assert counts[("Broker", "ns2", "b")] == before_ns2


async def test_config_br_defaults_delivery_is_used_by_triggers(start_mesh, make_sink):
    failing = await make_sink(lambda r, i: Reply(500))
    dls = await make_sink()
    mesh = await start_mesh(
        documents(
            f"""
            apiVersion: v1
            kind: ConfigMap
            metadata: {{name: config-br-defaults, namespace: knative-eventing}}
            data:
              default-br-config: |
                namespaceDefaults:
                  default:
                    delivery: {{retry: 0, deadLetterSink: {{uri: "{dls.url}"}}}}
            """,
            broker_and_trigger(failing.url, trigger="tr"),
        )
    )
    tr = await get(mesh, TRIGGERS, ns="default", name="tr")
    assert tr["status"]["deadLetterSinkUri"] == dls.url
    status, id_ = await post_binary(mesh.url + "/default/br")
    assert status == 202
    (dead,) = await dls.wait_for(1)
    assert dead.ce_id == id_ and len(failing.received) == 1  # retry 0: one attempt


async def test_unknown_broker_class_is_not_ready_with_a_reason(start_mesh):
    mesh = await start_mesh(
        """
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata:
          name: br
          annotations: {eventing.knative.dev/broker.class: MyOwnBroker}
        """
    )
    b = await get(mesh, BROKERS, ns="default", name="br")
    assert ready(b) == ("False", "UnknownBrokerClass")
    assert "MyOwnBroker" in b["status"]["conditions"][0]["message"]
    status, _ = await post_binary(mesh.url + "/default/br")
    assert status == 503


# --- RabbitmqBrokerConfig ------------------------------------------------------------------------


async def test_broker_on_a_second_vhost_and_one_with_classic_queues(vhost, start_mesh, make_sink):
    # `vhost` first: it is deleted after the mesh stopped.
    """One broker on another vhost through a connection Secret, one with classic queues
    while RABBITMESH_QUEUE_TYPE is quorum: RabbitMQ itself shows where each queue is."""
    sink = await make_sink()
    uri = f"amqp://guest:guest@127.0.0.1:{_port()}/{vhost}"
    mesh = await start_mesh(
        documents(
            f"""
            apiVersion: v1
            kind: Secret
            metadata: {{name: other-rabbit, namespace: knative-eventing}}
            stringData: {{uri: "{uri}"}}
            ---
            apiVersion: eventing.knative.dev/v1alpha1
            kind: RabbitmqBrokerConfig
            metadata: {{name: elsewhere, namespace: knative-eventing}}
            spec:
              rabbitmqClusterReference:
                connectionSecret: {{name: other-rabbit}}
              queueType: quorum
            ---
            apiVersion: eventing.knative.dev/v1alpha1
            kind: RabbitmqBrokerConfig
            metadata: {{name: classic}}
            spec:
              rabbitmqClusterReference: {{name: rabbitmq}}
              queueType: classic
            ---
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata:
              name: far
              annotations: {{eventing.knative.dev/broker.class: RabbitMQBroker}}
            spec:
              config:
                apiVersion: eventing.knative.dev/v1alpha1
                kind: RabbitmqBrokerConfig
                name: elsewhere
                namespace: knative-eventing
            """,
            broker_manifest("near", config="classic"),
            broker_manifest("plain"),
            *(trigger_manifest(f"{b}-tr", sink.url, broker=b) for b in ("far", "near", "plain")),
        ),
        queue_type="quorum",
    )
    far = await get(mesh, BROKERS, ns="default", name="far")
    assert ready(far) == ("True", "BrokerReady"), far["status"]
    assert vhost in far["status"]["effectiveConfig"]["rabbitmq"]["value"]
    other, main = queues(vhost), queues("/")
    far_q, near_q, plain_q = (
        f"{mesh.settings.topology_prefix}.trigger.default.{n}-tr" for n in ("far", "near", "plain")
    )
    assert other.get(far_q) == "quorum" and far_q not in main
    assert main.get(near_q) == "classic" and main.get(plain_q) == "quorum"
    assert f"{mesh.settings.topology_prefix}.delay" in rabbitmqctl(
        "list_exchanges", "-p", vhost, "-q", "--no-table-headers", "name"
    )

    for broker, id_ in (("far", "f1"), ("near", "n1"), ("plain", "p1")):
        status, _ = await post_binary(mesh.url + f"/default/{broker}", id_=id_)
        assert status == 202
    await sink.wait_for(3)
    assert sorted(sink.ids()) == ["f1", "n1", "p1"]

    # Changing the queue type of a broker that has queues is refused with a reason; the
    # broker keeps serving with the queues it has.
    text = (Path(mesh.settings.config_dir) / "manifests.yaml").read_text()
    await reapply(mesh, text.replace("queueType: classic", "queueType: quorum"))
    near = await get(mesh, BROKERS, ns="default", name="near")
    cond = next(c for c in near["status"]["conditions"] if c["type"] == "ConfigApplied")
    assert cond["status"] == "False" and cond["reason"] == "BrokerConfigImmutable"
    assert "cannot change a queue's type" in cond["message"]
    assert queues("/").get(near_q) == "classic"
    status, _ = await post_binary(mesh.url + "/default/near", id_="n2")
    assert status == 202
    await sink.wait_for(4)


async def test_missing_broker_config_or_secret_is_not_ready(start_mesh):
    mesh = await start_mesh(
        documents(
            broker_manifest("b1", config="nope"),
            """
            apiVersion: eventing.knative.dev/v1alpha1
            kind: RabbitmqBrokerConfig
            metadata: {name: cfg}
            spec:
              rabbitmqClusterReference: {connectionSecret: {name: missing}}
            """,
            broker_and_trigger(
                "http://127.0.0.1:9/", broker="b2", trigger="t", broker_config="cfg"
            ),
        )
    )
    assert ready(await get(mesh, BROKERS, ns="default", name="b1")) == (
        "False",
        "BrokerConfigNotFound",
    )
    assert ready(await get(mesh, BROKERS, ns="default", name="b2")) == ("False", "SecretNotFound")
    assert ready(await get(mesh, TRIGGERS, ns="default", name="t")) == ("False", "BrokerNotReady")


# --- the parallelism annotation ---------------------------------------------------------------


async def test_parallelism_annotation_one_is_fifo(start_mesh, make_sink):
    """parallelism 1: one delivery at a time, in order; without it, deliveries overlap."""
    delay = 0.1
    fifo, wide = (
        await make_sink(lambda r, i: Reply(200, delay=delay)),
        await make_sink(lambda r, i: Reply(200, delay=delay)),
    )
    mesh = await start_mesh(
        documents(
            broker_manifest(),
            trigger_manifest(
                "fifo",
                fifo.url,
                filter_type="fifo",
                annotations='rabbitmq.eventing.knative.dev/parallelism: "1"',
            ),
            trigger_manifest("wide", wide.url, filter_type="wide"),
        )
    )
    tr = await get(mesh, TRIGGERS, ns="default", name="fifo")
    assert tr["status"]["effectiveConfig"]["parallelism"] == {
        "value": 1,
        "source": "annotation rabbitmq.eventing.knative.dev/parallelism",
    }
    sent = [f"e{i:02d}" for i in range(10)]
    for id_ in sent:
        assert (await post_binary(mesh.url + "/default/br", "fifo", id_=id_))[0] == 202
        assert (await post_binary(mesh.url + "/default/br", "wide", id_=id_))[0] == 202
    await fifo.wait_for(10, timeout=20)
    await wide.wait_for(10, timeout=20)
    assert fifo.ids() == sent
    gaps = [b.at - a.at for a, b in zip(fifo.received, fifo.received[1:], strict=False)]
    assert min(gaps) >= delay * 0.9, gaps  # the next one only after the previous answered
    wide_gaps = [b.at - a.at for a, b in zip(wide.received, wide.received[1:], strict=False)]
    assert min(wide_gaps) < delay / 2  # the global setting (64) overlaps them


# --- config-features and errors -----------------------------------------------------------------


async def test_config_features_switch_what_has_an_equivalent(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        documents(
            """
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: config-features, namespace: knative-eventing}
            data:
              eventtype-auto-create: enabled
              transport-encryption: strict
              authentication-oidc: disabled
              new-trigger-filters: enabled
            """,
            broker_and_trigger(sink.url, trigger="tr"),
        )
    )
    status, cm = await call("GET", mesh.url + CONFIGMAPS + "/config-features")
    assert status == 200
    assert cm["status"]["effectiveConfig"]["eventtype-auto-create"] == {
        "value": "enabled",
        "source": "ConfigMap knative-eventing/config-features",
    }
    assert cm["status"]["effectiveConfig"]["authentication-oidc"] == {
        "value": "disabled",
        "source": "ConfigMap knative-eventing/config-features",
    }
    assert any("new-trigger-filters" in w for w in cm["status"]["warnings"])
    assert not any("authentication-oidc" in w for w in cm["status"]["warnings"])
    tr = await get(mesh, TRIGGERS, ns="default", name="tr")
    assert ready(tr) == ("False", "TransportEncryptionStrict")  # an http:// subscriber

    assert (await post_binary(mesh.url + "/default/br", "com.example.seen"))[0] == 202

    async def registered() -> bool:
        _, listed = await call(
            "GET", mesh.url + "/apis/eventing.knative.dev/v1beta3/namespaces/default/eventtypes"
        )
        return any(
            a.get("value") == "com.example.seen"
            for et in listed["items"]
            for a in et["spec"].get("attributes", [])
        )

    await eventually(registered, timeout=10, what="the EventType auto-created")

    # Hot: strict off again, the trigger delivers (the event waited in its queue).
    text = (Path(mesh.settings.config_dir) / "manifests.yaml").read_text()
    await reapply(
        mesh, text.replace("transport-encryption: strict", "transport-encryption: permissive")
    )
    assert ready(await get(mesh, TRIGGERS, ns="default", name="tr")) == ("True", "TriggerReady")
    await sink.wait_for(1)


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        (
            {"data": {"default-br-config": "clusterDefault: {brokerClass: Nope}"}},
            "data.default-br-config.clusterDefault.brokerClass",
        ),
        (
            {"data": {"default-br-config": "clusterDefalt: {}"}},
            "data.default-br-config.clusterDefalt",
        ),
        ({"data": {"other": "x"}}, "data.other"),
    ],
)
async def test_invalid_configmaps_get_422_naming_the_field(start_mesh, manifest, field):
    mesh = await start_mesh("")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-br-defaults", "namespace": "knative-eventing"},
        **manifest,
    }
    status, err = await call("POST", mesh.url + CONFIGMAPS, body)
    assert status == 422, err
    assert err["details"][0]["field"] == field


async def test_invalid_feature_flag_and_parallelism_get_422(start_mesh):
    mesh = await start_mesh("")
    status, err = await call(
        "POST",
        mesh.url + CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-features", "namespace": "knative-eventing"},
            "data": {"delivery-timeout": "sometimes"},
        },
    )
    assert status == 422 and err["details"][0]["field"] == "data.delivery-timeout"
    status, err = await call(
        "POST",
        mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/triggers",
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {
                "name": "t",
                "annotations": {"rabbitmq.eventing.knative.dev/parallelism": "0"},
            },
            "spec": {"broker": "b", "subscriber": {"uri": "http://x/"}},
        },
    )
    assert status == 422
    assert err["details"][0]["field"] == (
        "metadata.annotations[rabbitmq.eventing.knative.dev/parallelism]"
    )


def _port() -> int:
    from urllib.parse import urlsplit

    from tests.support.mesh import AMQP_URL

    return urlsplit(AMQP_URL).port or 5672


async def test_a_connection_secret_never_leaks_and_only_amqp_is_dialled(start_mesh, caplog):
    """Attack: a writer of manifests points a RabbitmqBrokerConfig at any host. Only
    amqp(s):// URIs are dialled (one attempt, bounded), and the URI (a secret: it holds a
    password) appears in no status and no log line, only its redacted form."""
    password = "s3cret-pass-word"
    mesh = await start_mesh(
        documents(
            f"""
            apiVersion: v1
            kind: Secret
            metadata: {{name: web}}
            stringData: {{uri: "http://admin:{password}@127.0.0.1:15672/"}}
            ---
            apiVersion: v1
            kind: Secret
            metadata: {{name: closed}}
            stringData: {{uri: "amqp://admin:{password}@127.0.0.1:9/"}}
            ---
            apiVersion: eventing.knative.dev/v1alpha1
            kind: RabbitmqBrokerConfig
            metadata: {{name: web}}
            spec: {{rabbitmqClusterReference: {{connectionSecret: {{name: web}}}}}}
            ---
            apiVersion: eventing.knative.dev/v1alpha1
            kind: RabbitmqBrokerConfig
            metadata: {{name: closed}}
            spec: {{rabbitmqClusterReference: {{connectionSecret: {{name: closed}}}}}}
            """,
            broker_manifest("web", config="web"),
            broker_manifest("closed", config="closed"),
        )
    )
    web = await get(mesh, BROKERS, ns="default", name="web")
    assert ready(web) == ("False", "InvalidConnectionSecret")
    closed = await get(mesh, BROKERS, ns="default", name="closed")
    assert ready(closed) == ("False", "RabbitMQUnavailable")  # and the replica is ready
    assert "127.0.0.1:9" in str(closed["status"]) and "***" in str(closed["status"])
    for shown in (web, closed):
        assert password not in str(shown)
    assert password not in caplog.text


async def test_moving_a_broker_with_triggers_is_refused_at_write_time(vhost, start_mesh):
    """As eventing-rabbitmq's webhook: a RabbitmqBrokerConfig change that would retype or move
    the queues of a broker's triggers gets 422 naming the field; once the broker has no
    triggers, the same change applies."""
    mesh = await start_mesh(broker_manifest("br", config="cfg"))
    cfgs = mesh.url + "/apis/eventing.knative.dev/v1alpha1/namespaces/default/rabbitmqbrokerconfigs"
    cfg = {
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "RabbitmqBrokerConfig",
        "metadata": {"name": "cfg"},
        "spec": {"queueType": "classic"},
    }
    status, body = await call("POST", cfgs, cfg)
    assert status == 201, body
    status, body = await call(
        "POST",
        mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/triggers",
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "tr"},
            "spec": {"broker": "br", "subscriber": {"uri": "http://127.0.0.1:9/"}},
        },
    )
    assert status == 201 and ready(body) == ("True", "TriggerReady"), body
    queue = f"{mesh.settings.topology_prefix}.trigger.default.tr"
    assert queues("/").get(queue) == "classic"

    for change, field in (
        ({"queueType": "quorum"}, "spec.queueType"),
        ({"vhost": vhost, "queueType": "classic"}, "spec.vhost"),
    ):
        status, err = await call("PUT", cfgs + "/cfg", {**cfg, "spec": change})
        assert status == 422, err
        assert err["details"][0]["field"] == field
        assert "cannot change a queue's type" in err["details"][0]["message"]
    status, err = await call(
        "POST",
        mesh.url + "/apply",
        text=f"""
apiVersion: eventing.knative.dev/v1alpha1
kind: RabbitmqBrokerConfig
metadata: {{name: cfg}}
spec: {{queueType: classic, vhost: {vhost}}}
""",
    )
    assert status == 422 and err["details"][0]["document"] == 1, err

    status, _ = await call(
        "DELETE", mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/triggers/tr"
    )
    assert status == 200
    status, body = await call("PUT", cfgs + "/cfg", {**cfg, "spec": {"vhost": vhost}})
    assert status == 200, body
    b = await get(mesh, BROKERS, ns="default", name="br")
    assert vhost in b["status"]["effectiveConfig"]["rabbitmq"]["value"]
    exchange = f"{mesh.settings.topology_prefix}.broker.default.br"
    names = lambda v: rabbitmqctl("list_exchanges", "-p", v, "-q", "--no-table-headers", "name")  # noqa: E731
    assert exchange in names(vhost).split() and exchange not in names("/").split()


async def test_cross_namespace_subscriptions_follow_the_feature_flag(start_mesh, make_sink):
    sink = await make_sink()
    sub = f"""
        apiVersion: messaging.knative.dev/v1
        kind: Subscription
        metadata: {{name: s, namespace: team-b}}
        spec:
          channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: ch, namespace: team-a}}
          subscriber: {{uri: "{sink.url}"}}
        """
    mesh = await start_mesh(
        """
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {name: ch, namespace: team-a}
        ---"""
        + sub
    )
    subs = "/apis/messaging.knative.dev/v1/namespaces/team-b/subscriptions"
    status, body = await call("GET", mesh.url + subs + "/s")
    assert ready(body) == ("False", "CrossNamespaceRefNotAllowed")  # from the config dir
    status, err = await call("PUT", mesh.url + subs + "/s", body | {"status": None})
    assert status == 422 and err["details"][0]["field"] == "spec.channel.namespace"

    status, _ = await call(
        "POST",
        mesh.url + CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-features", "namespace": "knative-eventing"},
            "data": {"cross-namespace-event-links": "enabled"},
        },
    )
    assert status == 201
    status, body = await call("GET", mesh.url + subs + "/s")
    assert ready(body) == ("True", "SubscriptionReady"), body
    assert (await post_binary(mesh.url + "/channels/team-a/ch", id_="x1"))[0] == 202
    await sink.wait_for(1)
    assert sink.ids() == ["x1"]


async def test_delivery_timeout_and_retryafter_flags(start_mesh):
    """Disabled in config-features, a trigger's delivery.timeout and retryAfterMax are
    ignored (Knative does not take the fields then); enabled (rabbitmesh's default), used."""
    mesh = await start_mesh(
        broker_and_trigger(
            "http://127.0.0.1:9/", trigger="tr", delivery="{timeout: PT2S, retryAfterMax: PT30S}"
        )
    )
    queue = f"{mesh.settings.topology_prefix}.trigger.default.tr"

    def policy():  # noqa: ANN202
        return mesh.server.ctx.workers[queue].subscriber.policy

    assert (policy().timeout, policy().retry_after_max) == (2.0, 30.0)
    status, _ = await call(
        "POST",
        mesh.url + CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-features", "namespace": "knative-eventing"},
            "data": {"delivery-timeout": "disabled", "delivery-retryafter": "disabled"},
        },
    )
    assert status == 201
    # The trigger's timeout is ignored; the operator's RABBITMESH_DEFAULT_DELIVERY_TIMEOUT still
    # bounds every attempt (a subscriber that never answers must not hold an event for ever).
    assert (policy().timeout, policy().retry_after_max) == (300.0, None)


OIDC_FEATURE = """
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: config-features, namespace: knative-eventing}
    data:
      authentication-oidc: FLAG
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: br}
    ---
    apiVersion: eventing.knative.dev/v1alpha1
    kind: EventPolicy
    metadata: {name: nobody}
    spec:
      to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: br}}]
      from: [{sub: "system:serviceaccount:default:someone-else"}]
    """


async def test_config_features_authentication_oidc_switches_oidc(start_mesh):
    """config-features' authentication-oidc switches the sender check on and off while
    running, over RABBITMESH_AUTHENTICATION_OIDC (the ConfigMap wins; without it the
    environment decides); the value and its source are in the ConfigMap's status."""
    mesh = await start_mesh(OIDC_FEATURE.replace("FLAG", "enabled"))  # environment: off
    assert not mesh.settings.authentication_oidc
    url = mesh.url + "/default/br"

    async def flag() -> dict:
        status, cm = await call("GET", mesh.url + CONFIGMAPS + "/config-features")
        assert status == 200, cm
        return cm["status"]["effectiveConfig"]["authentication-oidc"]

    source = "ConfigMap knative-eventing/config-features"
    assert await flag() == {"value": "enabled", "source": source}
    status, _ = await post_binary(url, "com.example.x")
    assert status == 401  # a policy applies: a token is needed
    broker = await get(mesh, BROKERS, ns="default", name="br")
    assert broker["status"]["address"]["audience"] == "eventing.knative.dev/broker/default/br"
    policy_path = "/apis/eventing.knative.dev/v1alpha1/namespaces/default/eventpolicies/nobody"

    async def policy_ready() -> tuple[str, str | None]:
        return ready(await get(mesh, policy_path))

    await eventually(lambda: _is(policy_ready(), "True"), timeout=10, what="policy Ready")
    status, discovery = await call("GET", mesh.url + "/.well-known/openid-configuration")
    assert status == 200 and discovery["issuer"] == mesh.settings.base_url

    await reapply(mesh, OIDC_FEATURE.replace("FLAG", "disabled"))
    assert await flag() == {"value": "disabled", "source": source}
    assert (await post_binary(url, "com.example.x"))[0] == 202
    status, _ = await call("GET", mesh.url + "/.well-known/openid-configuration")
    assert status == 404
    await eventually(
        lambda: _is(policy_ready(), "False", "OIDCAuthenticationDisabled"),
        timeout=10,
        what="policy not Ready: OIDC off",
    )

    async def audience() -> str | None:
        return (await get(mesh, BROKERS, ns="default", name="br"))["status"]["address"].get(
            "audience"
        )

    await eventually(lambda: _none(audience()), timeout=10, what="no audience while off")

    # The environment says on, the ConfigMap off: the ConfigMap wins ... (in a rabbitmesh of
    # its own: the two share one store, and replicas whose config dirs differ fight over the
    # documents in them, docs/control-plane.md; under a CPU burner the first one's config
    # dir put `disabled` back between the reapply below and its check)
    await mesh.stop()
    on = await start_mesh(OIDC_FEATURE.replace("FLAG", "disabled"), authentication_oidc=True)
    assert (await post_binary(on.url + "/default/br", "com.example.x"))[0] == 202
    # ... and without the flag in it, the environment decides.
    await reapply(
        on,
        OIDC_FEATURE.replace(
            "      authentication-oidc: FLAG\n", "      new-trigger-filters: enabled\n"
        ),
    )
    status, cm = await call("GET", on.url + CONFIGMAPS + "/config-features")
    assert cm["status"]["effectiveConfig"]["authentication-oidc"] == {
        "value": "enabled",
        "source": "RABBITMESH_AUTHENTICATION_OIDC",
    }
    assert (await post_binary(on.url + "/default/br", "com.example.x"))[0] == 401
    # default-authorization-mode too: a broker no policy applies to, open to anyone.
    assert (await post_binary(on.url + "/default/open", "com.example.x"))[0] == 404
    await reapply(
        on,
        OIDC_FEATURE.replace(
            "      authentication-oidc: FLAG\n", "      default-authorization-mode: allow-all\n"
        ).rstrip()
        + "\n    ---\n    apiVersion: eventing.knative.dev/v1\n    kind: Broker\n"
        + "    metadata: {name: open}\n",
    )
    status, cm = await call("GET", on.url + CONFIGMAPS + "/config-features")
    assert cm["status"]["effectiveConfig"]["default-authorization-mode"] == {
        "value": "allow-all",
        "source": "ConfigMap knative-eventing/config-features",
    }
    await eventually(
        lambda: _status(post_binary(on.url + "/default/open", "com.example.x"), 202),
        timeout=10,
        what="the open broker takes events without a token",
    )
    assert (await post_binary(on.url + "/default/br", "com.example.x"))[0] == 401


async def _none(got) -> bool:  # noqa: ANN001
    return (await got) is None


async def _status(got, want: int) -> bool:  # noqa: ANN001
    return (await got)[0] == want


async def _is(got, status: str, reason: str | None = None) -> bool:  # noqa: ANN001
    s, r = await got
    return s == status and (reason is None or r == reason)


async def test_loosening_security_flags_is_logged(start_mesh, caplog):
    """A ConfigMap applied through the API wins over the operator's settings: switching
    default-authorization-mode from deny-all to allow-all (anyone may send, no token) left
    no trace in the log but `ConfigMap ... configured`. Now each change of a
    security-relevant flag is one WARNING naming the value, its source and what it was."""
    import logging

    caplog.set_level(logging.INFO, logger="rabbitmesh")
    mesh = await start_mesh(
        broker_manifest("br"), authentication_oidc=True, default_authorization_mode="deny-all"
    )
    assert (await post_binary(mesh.url + "/default/br", "com.example.x"))[0] == 403
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-features", "namespace": "knative-eventing"},
        "data": {
            "default-authorization-mode": "allow-all",
            "cross-namespace-event-links": "enabled",
        },
    }
    status, cm = await call("POST", mesh.url + CONFIGMAPS, body)
    assert status == 201, cm
    await eventually(
        lambda: _is_status(post_binary(mesh.url + "/default/br", "com.example.x"), 202),
        timeout=10,
        what="allow-all in force",
    )

    def warned() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and " is now " in r.getMessage()
        ]

    await eventually(lambda: len(warned()) >= 2, timeout=10, what="the changes logged")
    lines = warned()
    assert any(
        "default-authorization-mode is now allow-all (ConfigMap knative-eventing/config-features; was deny-all from RABBITMESH_DEFAULT_AUTHORIZATION_MODE)"
        in line
        for line in lines
    ), lines
    assert any("cross-namespace-event-links is now enabled" in line for line in lines), lines


async def _is_status(posting, status: int) -> bool:  # noqa: ANN001
    return (await posting)[0] == status
