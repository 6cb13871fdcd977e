"""The pure parts of the bridges and of sender authorization: manifests, message -> event,
routing keys, Knative's identity names, EventPolicy matching, token checks."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from rabbitmesh.amqp.remote import Cluster, ClusterNotReady, check_not_ours, with_vhost
from rabbitmesh.auth.identity import namespace_of, service_account, subject
from rabbitmesh.auth.issuer import Issuer
from rabbitmesh.auth.policies import applies, compile_policy, subjects
from rabbitmesh.auth.verify import StaticKeys, TokenError, Verifier
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent
from rabbitmesh.reconciler.rabbitmqsink import routing_key
from rabbitmesh.resources.loader import ManifestError, parse_document
from rabbitmesh.sources.rabbitmq import to_event


def load(doc: dict[str, Any]):
    return parse_document(doc, "test.yaml", 0)


def source(**config: Any):
    return load(
        {
            "apiVersion": "sources.knative.dev/v1alpha1",
            "kind": "RabbitmqSource",
            "metadata": {"name": "src", "namespace": "ns"},
            "spec": {
                "rabbitmqResourcesConfig": {"queueName": "q", **config},
                "ceOverrides": {"extensions": {"team": "blue"}},
                "sink": {"uri": "http://sink/"},
            },
        }
    )


# --- manifests ------------------------------------------------------------------------------


def test_eventing_rabbitmqs_sample_loads_unchanged():
    res = load(
        {
            "apiVersion": "sources.knative.dev/v1alpha1",
            "kind": "RabbitmqSource",
            "metadata": {"name": "rabbitmq-source", "namespace": "external-cluster-sample"},
            "spec": {
                "rabbitmqClusterReference": {
                    "connectionSecret": {"name": "rabbitmq-secret-credentials"}
                },
                "rabbitmqResourcesConfig": {
                    "predeclared": True,
                    "parallelism": 10,
                    "queueName": "eventing-rabbitmq-source",
                    "exchangeName": "eventing-rabbitmq-source",
                },
                "delivery": {"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"},
                "sink": {
                    "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "x"}
                },
            },
        }
    )
    assert res.connection_secret == "rabbitmq-secret-credentials"
    assert res.spec.rabbitmq_resources_config.parallelism == 10


@pytest.mark.parametrize(
    "config, field",
    [
        ({"parallelism": 0}, "parallelism"),
        ({"parallelism": 1001}, "parallelism"),
        ({"queueName": ""}, "queueName"),
        ({"exchangeName": "amq.topic"}, "exchangeName"),
    ],
)
def test_invalid_rabbitmq_sources_name_the_field(config, field):
    with pytest.raises(ManifestError) as e:
        source(**config)
    assert field in str(e.value)


@pytest.mark.parametrize("key", ["{Type}", "orders.{sub-ject}", "{", "a}b", "{type.__class__}"])
def test_routing_key_templates_take_only_attribute_placeholders(key):
    with pytest.raises(ManifestError) as e:
        load(
            {
                "apiVersion": "sinks.rabbitmesh.dev/v1alpha1",
                "kind": "RabbitmqSink",
                "metadata": {"name": "s"},
                "spec": {"exchangeName": "x", "routingKey": key},
            }
        )
    assert "spec.routingKey" in str(e.value)


def test_routing_key_from_a_template():
    event = CloudEvent({"specversion": "1.0", "id": "1", "source": "/", "type": "t", "n": 3})
    assert routing_key("orders.{type}.{n}")(event) == "orders.t.3"
    assert routing_key("fixed")(event) == "fixed"
    with pytest.raises(InvalidEvent, match="'subject'"):
        routing_key("{subject}")(event)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"from": [{"sub": "a*b"}]}, "trailing"),
        ({"from": [{"sub": "x", "ref": {"kind": "PingSource", "name": "p"}}]}, "exactly one"),
        ({"to": [{}]}, "exactly one"),
        ({"filters": [{"cesql": "type ="}]}, "spec.filters"),
    ],
)
def test_invalid_event_policies(spec, message):
    with pytest.raises(ManifestError, match=message):
        load(
            {
                "apiVersion": "eventing.knative.dev/v1alpha1",
                "kind": "EventPolicy",
                "metadata": {"name": "p"},
                "spec": spec,
            }
        )


def test_a_trigger_with_only_a_broker_ref():
    t = load(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t", "namespace": "team-a"},
            "spec": {
                "brokerRef": {"kind": "Broker", "name": "shared", "namespace": "platform"},
                "subscriber": {"uri": "http://x/"},
            },
        }
    )
    assert (t.spec.broker, t.broker_namespace()) == ("shared", "platform")


# --- message -> event -------------------------------------------------------------------


def test_a_plain_message_becomes_a_rabbitmq_event():
    ev = to_event(
        source(),
        b"body",
        {"X-Order-Id": "A1", "n": 2, "raw": b"\xff", "table": {"a": 1}, "ok": True},
        {
            "content_type": "text/plain",
            "message_id": None,
            "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
            "routing_key": "k",
            "priority": 5,
        },
    )
    a = ev.attributes
    assert a["type"] == "dev.knative.rabbitmq.event"
    assert a["source"] == "/apis/v1/namespaces/ns/rabbitmqsources/src#q"
    assert len(str(a["id"])) == 36  # a fresh UUID without message_id
    assert a["time"] == "2026-01-01T00:00:00Z"
    assert a["datacontenttype"] == "text/plain"
    assert (a["rabbitmqxorderid"], a["rabbitmqn"], a["rabbitmqok"]) == ("A1", 2, True)
    assert a["rabbitmqraw"] == "/w=="  # not UTF-8: base64
    assert "rabbitmqtable" not in a
    assert (a["rabbitmqroutingkey"], a["rabbitmqpriority"]) == ("k", 5)
    assert a["team"] == "blue"
    assert ev.data == b"body"


def test_a_cloudevent_message_passes_through_and_a_broken_one_is_refused():
    headers = {"ce-specversion": "1.0", "ce-id": "x", "ce-type": "t", "ce-source": "/s"}
    ev = to_event(source(), b"", headers, {"content_type": None})
    assert (ev.type, ev.source, ev.id) == ("t", "/s", "x")
    with pytest.raises(InvalidEvent):
        to_event(source(), b"", {**headers, "ce-source": ""}, {"content_type": None})


# --- other RabbitMQs ----------------------------------------------------------------------


def test_vhost_and_reserved_names():
    assert with_vhost("amqp://u:p@h:5672/", "a/b") == "amqp://u:p@h:5672/a%2Fb"
    assert with_vhost("amqp://u:p@h/x", None) == "amqp://u:p@h/x"
    own = Cluster("amqp://h/", own=True)
    with pytest.raises(ClusterNotReady, match="ReservedName|rabbitmesh's own"):
        check_not_ours(own, "rabbitmesh", {"spec.exchangeName": "rabbitmesh.store"})
    check_not_ours(own, "rabbitmesh", {"spec.exchangeName": "rabbitmesh-app"})
    # Another RabbitMQ too: a Secret's URL may name rabbitmesh's own by another spelling.
    with pytest.raises(ClusterNotReady, match="ReservedName|rabbitmesh's own"):
        check_not_ours(Cluster("amqp://other/", own=False), "rabbitmesh", {"q": "rabbitmesh.store"})
    check_not_ours(Cluster("amqp://other/", own=False), "rabbitmesh", {"q": "rabbitmesh-app"})


# --- identities and policies --------------------------------------------------------------


def test_knatives_identity_names():
    assert (
        subject("sources.knative.dev", "PingSource", "default", "ticker")
        == "system:serviceaccount:default:ticker-oidc-sources.knative.dev-pingsource"
    )
    long = service_account("eventing.knative.dev", "Trigger", "t" * 80)
    assert len(long) == 63
    assert namespace_of("system:serviceaccount:team-a:x") == "team-a"
    assert namespace_of("alice") is None


def policy(spec: dict[str, Any], ns: str = "default"):
    return load(
        {
            "apiVersion": "eventing.knative.dev/v1alpha1",
            "kind": "EventPolicy",
            "metadata": {"name": "p", "namespace": ns},
            "spec": spec,
        }
    )


def broker(name: str, ns: str = "default", **labels: str):
    return load(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
        }
    )


def test_which_targets_a_policy_applies_to():
    by_ref = policy(
        {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "a"}}]}
    )
    assert applies(by_ref, broker("a")) and not applies(by_ref, broker("b"))
    assert not applies(by_ref, broker("a", "other"))  # only its own namespace
    by_labels = policy({"to": [{"selector": {"kind": "Broker", "matchLabels": {"tier": "gold"}}}]})
    assert applies(by_labels, broker("x", tier="gold"))
    assert not applies(by_labels, broker("y", tier="silver"))
    assert applies(policy({}), broker("any"))  # no `to`: every target of the namespace


def test_who_and_what_a_policy_allows():
    p = policy(
        {
            "from": [
                {"sub": "system:serviceaccount:default:producer-*"},
                {"sub": "alice"},
                {
                    "ref": {
                        "apiVersion": "sources.knative.dev/v1",
                        "kind": "PingSource",
                        "name": "t",
                    }
                },
            ],
            "filters": [{"exact": {"type": "ok"}}],
        }
    )
    c = compile_policy(p)
    assert c.allows_subject("system:serviceaccount:default:producer-7")
    assert c.allows_subject("alice") and not c.allows_subject("alice2")
    assert c.allows_subject(subjects(p)[2])
    assert not c.allows_subject("system:serviceaccount:other:producer-7")
    assert c.allows_event({"type": "ok"}) and not c.allows_event({"type": "no"})


# --- tokens -----------------------------------------------------------------------------


async def test_tokens_are_checked_against_the_issuers_keys():
    me = Issuer("https://mesh.example", ec.generate_private_key(ec.SECP256R1()))
    v = Verifier({me.issuer: StaticKeys(me.jwks)})
    token = me.token("sub-1", "aud-1")
    assert me.token("sub-1", "aud-1") == token  # cached
    claims = await v.verify(token, "aud-1")
    assert claims["sub"] == "sub-1" and claims["iss"] == "https://mesh.example"
    with pytest.raises(TokenError, match="not for this target"):
        await v.verify(token, "aud-2")
    now = int(time.time())
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(
        {"iss": me.issuer, "sub": "x", "aud": "aud-1", "exp": now + 60},
        other,
        algorithm="ES256",
        headers={"kid": me.kid},
    )
    with pytest.raises(TokenError, match="invalid token"):
        await v.verify(forged, "aud-1")
    expired = jwt.encode(
        {"iss": me.issuer, "sub": "x", "aud": "aud-1", "exp": now - 60},
        me.key,
        algorithm="ES256",
        headers={"kid": me.kid},
    )
    with pytest.raises(TokenError, match="expired"):
        await v.verify(expired, "aud-1")
    no_sub = jwt.encode(
        {"iss": me.issuer, "aud": "aud-1", "exp": now + 60},
        me.key,
        algorithm="ES256",
        headers={"kid": me.kid},
    )
    with pytest.raises(TokenError, match="sub"):
        await v.verify(no_sub, "aud-1")
    assert me.headers("s", None) is None  # no audience, no token


async def test_an_issuers_keys_from_a_file(tmp_path):
    from rabbitmesh.auth.verify import FileKeys

    me = Issuer("https://idp.example", ec.generate_private_key(ec.SECP256R1()))
    path = tmp_path / "jwks.json"
    path.write_text("not json")
    v = Verifier({me.issuer: FileKeys(path)})
    with pytest.raises(TokenError, match="no key"):
        await v.verify(me.token("s", "a"), "a")
    import json
    import os

    path.write_text(json.dumps(me.jwks))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime: read again
    assert (await v.verify(me.token("s", "a"), "a"))["sub"] == "s"
