"""Manifest loading: models, defaults, and errors naming file, document and field."""

from __future__ import annotations

import textwrap

import pytest

from rabbitmesh.reconciler.resolve import resolve
from rabbitmesh.resources.duck import Destination
from rabbitmesh.resources.eventing import Broker, Trigger
from rabbitmesh.resources.loader import ManifestError, load_path, load_text
from tests.support.manifests import broker_and_trigger


def load(text: str):
    return load_text(textwrap.dedent(text), "test.yaml")


def error(text: str) -> str:
    with pytest.raises(ManifestError) as e:
        load(text)
    return str(e.value)


def test_seed_example_loads():
    res = load(
        broker_and_trigger(
            "http://127.0.0.1:9001/", broker="br1", trigger="tr1", filter_type="com.hj.hi"
        )
    )
    broker, trigger = res
    assert isinstance(broker, Broker) and isinstance(trigger, Trigger)
    assert broker.namespace == "default"
    assert trigger.spec.filter.attributes == {"type": "com.hj.hi"}
    assert trigger.spec.subscriber.uri == "http://127.0.0.1:9001/"


def test_delivery_and_ref_fields():
    (t,) = load("""
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {name: t, namespace: team-a}
        spec:
          broker: default
          subscriber:
            ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: display}
          delivery:
            retry: 3
            backoffPolicy: linear
            backoffDelay: PT0.5S
            timeout: PT2S
            retryAfterMax: PT10S
            deadLetterSink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: dlq}}
        """)
    d = t.spec.delivery
    assert (d.retry, d.backoff_policy, d.backoff_delay, d.timeout) == (
        3,
        "linear",
        "PT0.5S",
        "PT2S",
    )
    assert d.dead_letter_sink.ref.kind == "Broker"
    assert t.namespace == "team-a"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Trigger
     metadata: {name: t}
     spec: {broker: b}
     """,
            "test.yaml: document 1 (Trigger t): spec.subscriber: Field required",
        ),
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Trigger
     metadata: {name: t}
     spec: {broker: b, subscriber: {uri: "ftp://x"}}
     """,
            "spec.subscriber: Value error, uri must be an absolute http(s) URL".replace(
                "Value error, ", ""
            ),
        ),
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Trigger
     metadata: {name: t}
     spec: {broker: b, subscriber: {uri: "http://x"}, delivery: {backoffDelay: 2s}}
     """,
            "spec.delivery.backoffDelay: '2s' is not an ISO-8601 duration",
        ),
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Trigger
     metadata: {name: t}
     spec: {broker: b, subscriber: {uri: "http://x"}, delivery: {backoffPolicy: fibonacci}}
     """,
            "spec.delivery.backoffPolicy: Input should be 'exponential' or 'linear'",
        ),
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Trigger
     metadata: {name: t}
     spec: {broker: b, subscriber: {uri: "http://x"}, filtr: {}}
     """,
            "spec.filtr: unknown field (did you mean 'filter'?)",
        ),
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Trigger
     metadata: {name: t}
     spec: {broker: b, subscriber: {uri: "http://x"}, filter: {attributes: {Type: x}}}
     """,
            "spec.filter.attributes.Type: invalid attribute name 'Type'",
        ),
        (
            """
     apiVersion: eventing.knative.dev/v1
     kind: Broker
     metadata: {name: Bad_Name}
     """,
            "metadata.name: Value error, must be lowercase".replace("Value error, ", ""),
        ),
        (
            """
     apiVersion: eventing.knative.dev/v2
     kind: Broker
     metadata: {name: b}
     """,
            "kind: unknown kind 'Broker' in 'eventing.knative.dev/v2'",
        ),
        (
            """
     kind: Broker
     metadata: {name: b}
     """,
            "apiVersion: is required",
        ),
        ("- just\n- a list\n", "a manifest must be a mapping"),
        ("a: [unclosed\n", "invalid YAML at line"),
    ],
)
def test_errors_name_file_document_and_field(doc, expected):
    assert expected in error(doc)


def test_error_in_second_document_says_so():
    msg = error("""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: ok}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {name: broken}
        spec: {broker: ok}
        """)
    assert msg.startswith("test.yaml: document 2 (Trigger broken): spec.subscriber")


def test_status_in_input_is_ignored():
    (b,) = load("""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: b}
        status: {conditions: [{type: Ready, status: "True"}]}
        """)
    assert b.status.conditions == []


def test_directory_loading_is_not_recursive_and_rejects_duplicates(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("not: a manifest\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [r.name for r in load_path(tmp_path)] == ["b"]
    (tmp_path / "b.yml").write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n"
    )
    with pytest.raises(ManifestError, match="defined more than once"):
        load_path(tmp_path)


@pytest.mark.parametrize(
    ("dest", "url"),
    [
        ({"uri": "http://x:1/p"}, "http://x:1/p"),
        ({"ref": {"kind": "Broker", "name": "b"}}, "http://mesh:8080/ns1/b"),
        (
            {"ref": {"kind": "Broker", "name": "b", "namespace": "other"}},
            "http://mesh:8080/other/b",
        ),
        ({"ref": {"kind": "InMemoryChannel", "name": "c"}}, "http://mesh:8080/channels/ns1/c"),
        ({"ref": {"kind": "Sequence", "name": "s"}}, "http://mesh:8080/sequences/ns1/s"),
        ({"ref": {"kind": "Parallel", "name": "p"}}, "http://mesh:8080/parallels/ns1/p"),
        ({"ref": {"kind": "Service", "name": "display"}}, "http://display.ns1.svc/"),
        (
            {"ref": {"kind": "Service", "name": "display"}, "uri": "/extra"},
            "http://display.ns1.svc/extra",
        ),
    ],
)
def test_destination_resolution(dest, url):
    got = resolve(
        Destination.model_validate(dest),
        "ns1",
        base_url="http://mesh:8080",
        service_url_template="http://{name}.{namespace}.svc/",
    )
    assert got == url


def test_every_field_error_is_listed_with_a_did_you_mean():
    msg = error("""
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {name: tr1}
        spec:
          broker: default
          subscribr: {uri: "http://x"}
          filter: {atributes: {type: x}}
        """)
    assert msg.startswith("test.yaml: document 1 (Trigger tr1): ")
    for part in (
        "spec.filter.atributes: unknown field (did you mean 'attributes'?)",
        "spec.subscriber: Field required",
        "spec.subscribr: unknown field (did you mean 'subscriber'?)",
    ):
        assert part in msg, msg
    assert "more)" not in msg


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # Inside a list of models, and with a camelCase alias.
        (
            """
            apiVersion: flows.knative.dev/v1
            kind: Sequence
            metadata: {name: s}
            spec: {steps: [{uri: "http://x", delivery: {backofDelay: PT1S}}]}
            """,
            "spec.steps[0].delivery.backofDelay: unknown field (did you mean 'backoffDelay'?)",
        ),
        # Nothing close: no guess.
        (
            """
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            spec: {zzz: 1}
            """,
            "spec.zzz: unknown field",
        ),
    ],
)
def test_unknown_field_suggestions(doc, expected):
    msg = error(doc)
    assert msg.endswith(expected), msg
