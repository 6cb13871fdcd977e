"""Channel, Subscription, Sequence and Parallel manifests: the seed's shapes load, mistakes
are named by field, and generated names are Knative's and never collide."""

from __future__ import annotations

import textwrap

import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.hosted import hosted_target
from rabbitmesh.reconciler.resolve import resolve
from rabbitmesh.resources.duck import Destination
from rabbitmesh.resources.flows import Parallel, Sequence
from rabbitmesh.resources.loader import ManifestError, load_text
from rabbitmesh.resources.messaging import Channel, Subscription
from rabbitmesh.resources.registry import by_kind


def load(text: str):
    return load_text(textwrap.dedent(text), "test.yaml")


def error(text: str) -> str:
    with pytest.raises(ManifestError) as e:
        load(text)
    return str(e.value)


KSVC = "{apiVersion: serving.knative.dev/v1, kind: Service, name: event-display}"


def test_seed_shapes_load_with_refs_to_knative_services():
    imc, sub, seq, par = load(f"""
        apiVersion: messaging.knative.dev/v1
        kind: InMemoryChannel
        metadata: {{name: imc1}}
        ---
        apiVersion: messaging.knative.dev/v1
        kind: Subscription
        metadata: {{name: sub1}}
        spec:
          channel: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: imc1}}
          subscriber: {{ref: {KSVC}}}
        ---
        apiVersion: flows.knative.dev/v1
        kind: Sequence
        metadata: {{name: sequence}}
        spec:
          channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
          steps:
            - ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: sq-appender-01}}
            - ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: sq-appender-02}}
              delivery: {{retry: 2}}
          reply: {{ref: {KSVC}}}
        ---
        apiVersion: flows.knative.dev/v1
        kind: Parallel
        metadata: {{name: parallel}}
        spec:
          channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
          branches:
            - filter: {{ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: f}}}}
              subscriber: {{ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: a}}}}
            - subscriber: {{uri: http://127.0.0.1:9000/}}
              delivery: {{retry: 1}}
          reply: {{ref: {KSVC}}}
        """)
    assert isinstance(imc, Channel) and imc.KIND == "Channel" and imc.kind == "InMemoryChannel"
    assert imc.key == ("Channel", "default", "imc1")
    assert imc.template.kind == "InMemoryChannel"
    assert isinstance(sub, Subscription) and sub.spec.reply is None
    assert isinstance(seq, Sequence) and seq.spec.steps[1].delivery.retry == 2
    assert isinstance(par, Parallel) and par.spec.branches[1].filter is None
    url = resolve(
        seq.spec.steps[0], "default", base_url="http://h", service_url_template="http://{name}"
    )
    assert url == "http://sq-appender-01"


def test_inmemorychannel_is_the_channel_kind():
    assert by_kind("inmemorychannels").kind == "Channel"
    assert by_kind("InMemoryChannel").kind == "Channel"
    text = """
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {name: c}
        ---
        apiVersion: messaging.knative.dev/v1
        kind: InMemoryChannel
        metadata: {name: c}
        """
    from rabbitmesh.resources.loader import check_duplicates

    with pytest.raises(ManifestError, match="defined more than once"):
        check_duplicates(load(text))
    ref = Destination.model_validate(
        {"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"}}
    )
    url = resolve(ref, "ns", base_url="http://h", service_url_template="http://{name}")
    assert url == "http://h/channels/ns/c"


def test_channel_template_is_recorded_and_its_delivery_checked():
    (ch,) = load("""
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {name: c}
        spec:
          channelTemplate:
            apiVersion: messaging.knative.dev/v1beta1
            kind: KafkaChannel
            spec: {numPartitions: 3, delivery: {retry: 4}}
        """)
    assert ch.template.kind == "KafkaChannel"
    assert ch.template.delivery.retry == 4
    assert ch.template.reference("c", "ns")["apiVersion"] == "messaging.knative.dev/v1beta1"
    assert "spec.channelTemplate.spec" in error("""
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {name: c}
        spec: {channelTemplate: {kind: InMemoryChannel, spec: {delivery: {retry: -1}}}}
        """)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ("{channel: {kind: Channel, name: c}}", "spec.subscriber", "subscriber or a reply"),
        (
            "{channel: {kind: Broker, name: c}, subscriber: {uri: 'http://x/'}}",
            "spec.channel.kind",
            "channel kind",
        ),
        # A channel in another namespace is valid: RABBITMESH_CROSS_NAMESPACE_EVENT_LINKS
        # decides, as a status (tests/integration/test_cross_namespace.py).
        ("{channel: {kind: Channel, name: c}, subscriber: {}}", "spec.subscriber", "ref or uri"),
        ("{subscriber: {uri: 'http://x/'}}", "spec.channel", "required"),
    ],
)
def test_subscription_mistakes_name_the_field(spec, field, words):
    msg = error(f"""
        apiVersion: messaging.knative.dev/v1
        kind: Subscription
        metadata: {{name: s}}
        spec: {spec}
        """)
    assert f"(Subscription s): {field}" in msg and words in msg


def test_flows_need_steps_and_branches():
    assert "spec.steps" in error("""
        apiVersion: flows.knative.dev/v1
        kind: Sequence
        metadata: {name: s}
        spec: {steps: []}
        """)
    assert "spec.branches[0].subscriber" in error("""
        apiVersion: flows.knative.dev/v1
        kind: Parallel
        metadata: {name: p}
        spec: {branches: [{filter: {uri: 'http://x/'}}]}
        """)


def test_generated_names_are_knatives_and_hosted_exchanges_never_collide():
    assert Sequence.channel_name("seq", 0) == "seq-kn-sequence-0"
    assert Parallel.ingress_channel_name("p") == "p-kn-parallel"
    assert Parallel.branch_channel_name("p", 1) == "p-kn-parallel-1"
    assert Parallel.filter_subscription_name("p", 1) == "p-kn-parallel-filter-1"
    names = Names("rm")
    exchanges = {
        hosted_target(names, kind, "ns", "x").exchange
        for kind in ("Broker", "Channel", "Sequence", "Parallel")
    }
    assert len(exchanges) == 4
    assert hosted_target(names, "InMemoryChannel", "ns", "x").exchange == "rm.channel.ns.x"
    assert hosted_target(names, "Service", "ns", "x") is None
    # A user Channel named like a generated one lives under another segment.
    assert names.channel_exchange("ns", "x-kn-sequence-0") != names.flow_exchange(
        "sequence", "ns", Sequence.channel_name("x", 0)
    )
    assert names.reply_queue(names.subscription_queue("ns", "a")) != names.subscription_queue(
        "ns", "a.reply"
    )
