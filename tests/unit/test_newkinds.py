"""EventTransform, RequestReply and JobSink without RabbitMQ: validation as Knative's
webhook, the JSONata view of an event, signed reply ids, the run log."""

from __future__ import annotations

import pytest

from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.ingress.requestreply import ReplyIds
from rabbitmesh.jobs.runner import RunLog, run_id
from rabbitmesh.resources import kinds  # noqa: F401
from rabbitmesh.resources.loader import ManifestError, parse_document
from rabbitmesh.transform.jsonata import TransformError, event_input, transform_event

ET = {
    "apiVersion": "eventing.knative.dev/v1alpha1",
    "kind": "EventTransform",
    "metadata": {"name": "t"},
}
RR = {
    "apiVersion": "eventing.knative.dev/v1alpha1",
    "kind": "RequestReply",
    "metadata": {"name": "r"},
}
JS = {"apiVersion": "sinks.knative.dev/v1alpha1", "kind": "JobSink", "metadata": {"name": "j"}}
BROKER_REF = {"kind": "Broker", "name": "default"}
JOB = {"spec": {"template": {"spec": {"containers": [{"name": "m", "command": ["true"]}]}}}}


def error(doc: dict) -> str:
    with pytest.raises(ManifestError) as e:
        parse_document(doc, "test", 0)
    return str(e.value)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({}, "spec.jsonata", "exactly one transformation"),
        ({"jsonata": {"expression": " "}}, "spec.jsonata.expression", "missing"),
        ({"jsonata": {"expression": "{"}}, "spec.jsonata.expression", "invalid JSONata"),
        (
            {"jsonata": {"expression": "$"}, "reply": {"discard": True}},
            "spec.reply",
            "without spec.sink",
        ),
        (
            {
                "jsonata": {"expression": "$"},
                "sink": {"uri": "http://x/"},
                "reply": {"discard": True, "jsonata": {"expression": "$"}},
            },
            "spec.reply",
            "both",
        ),
        (
            {
                "jsonata": {"expression": "$"},
                "sink": {"uri": "http://x/"},
                "reply": {"jsonata": {"expression": "("}},
            },
            "spec.reply.jsonata.expression",
            "invalid",
        ),
    ],
)
def test_eventtransform_validation(spec, field, words):
    message = error({**ET, "spec": spec})
    assert f"{field}:" in message and words in message


def test_eventtransform_accepts_knatives_manifest():
    res = parse_document(
        {
            **ET,
            "spec": {
                "sink": {
                    "ref": {
                        "apiVersion": "serving.knative.dev/v1",
                        "kind": "Service",
                        "name": "svc",
                    }
                },
                "reply": {"jsonata": {"expression": "$"}},
                "jsonata": {"expression": '{"a": data}'},
            },
        },
        "test",
        0,
    )
    assert res.reply_expression == "$" and not res.discard_reply


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"brokerRef": {"kind": "Channel", "name": "c"}}, "spec.brokerRef.kind"),
        ({"brokerRef": {**BROKER_REF, "apiVersion": "v1"}}, "spec.brokerRef.apiVersion"),
        ({"brokerRef": {**BROKER_REF, "namespace": "other"}}, "spec.brokerRef.namespace"),
        ({"brokerRef": BROKER_REF, "timeout": "30s"}, "spec.timeout"),
        ({"brokerRef": BROKER_REF, "timeout": "PT0S"}, "spec.timeout"),
        ({"brokerRef": BROKER_REF, "correlationAttribute": "Corr-Id"}, "spec.correlationAttribute"),
        ({"brokerRef": BROKER_REF, "replyAttribute": "id"}, "spec.replyAttribute"),
        ({"brokerRef": BROKER_REF, "replyAttribute": "correlationid"}, "spec.replyAttribute"),
    ],
)
def test_requestreply_validation(spec, field):
    assert f"{field}:" in error({**RR, "spec": spec})


def test_requestreply_defaults_as_knative():
    res = parse_document({**RR, "spec": {"brokerRef": BROKER_REF}}, "test", 0)
    s = res.spec
    assert (s.correlation_attribute, s.reply_attribute, s.timeout) == (
        "correlationid",
        "replyid",
        "PT30S",
    )
    assert s.broker_ref.api_version == "eventing.knative.dev/v1"
    assert res.timeout_seconds == 30


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.job"),
        ({"job": {"spec": {}}}, "spec.job.spec.template"),
        (
            {"job": {"spec": {"template": {"spec": {"containers": []}}}}},
            "spec.job.spec.template.spec.containers",
        ),
        (
            {"job": {"spec": {"template": {"spec": {"containers": [{"name": "m"}]}}}}},
            "spec.job.spec.template.spec.containers[0]",
        ),
        (
            {
                "job": {
                    "spec": {
                        "template": {
                            "spec": {"containers": [{"name": "m", "image": "--privileged"}]}
                        }
                    }
                }
            },
            "spec.job.spec.template.spec.containers[0].image",
        ),
    ],
)
def test_jobsink_validation(spec, field):
    assert f"{field}:" in error({**JS, "spec": spec})


def test_jobsink_runtime_annotation_is_checked():
    doc = {
        **JS,
        "metadata": {"name": "j", "annotations": {"rabbitmesh.dev/runtime": "vm"}},
        "spec": {"job": JOB},
    }
    assert "rabbitmesh.dev/runtime" in error(doc)


def event(**attrs: object) -> CloudEvent:
    base = {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "datacontenttype": "application/json",
    }
    return CloudEvent({**base, **attrs}, b'{"n": 2}')  # type: ignore[arg-type]


def test_the_expression_sees_attributes_at_top_level_and_data():
    assert event_input(event(myext="x")) == {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "datacontenttype": "application/json",
        "myext": "x",
        "data": {"n": 2},
    }
    binary = CloudEvent(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "s",
            "type": "t",
            "datacontenttype": "application/octet-stream",
        },
        b"\x00\x01",
    )
    assert event_input(binary)["data_base64"] == "AAE="


def test_the_result_must_be_a_cloudevent():
    out = transform_event('$merge([$, {"type": "t2", "data": {"m": data.n * 3}}])', event(), 100)
    assert out.type == "t2" and out.data == b'{"m":6}'
    for expr in ('"text"', "nothing", '{"id": id}', '$merge([$, {"specversion": "2.0"}])'):
        with pytest.raises(TransformError):
            transform_event(expr, event(), 100)


def test_reply_ids_are_signed_per_replica_and_requestreply():
    a, b = ReplyIds(b"k" * 32, "aaaaaaaaaaaa"), ReplyIds(b"k" * 32, "bbbbbbbbbbbb")
    rid = a.new("ns", "rr")
    nonce, replica, mac = rid.split(":")
    assert replica == "aaaaaaaaaaaa" and len(nonce) == 22 and len(mac) == 22
    assert a.mine("ns", "rr", rid)
    assert not a.mine("ns", "other", rid)  # another RequestReply's id
    assert not b.mine("ns", "rr", rid)  # another replica's
    assert not a.mine("ns", "rr", rid[:-1] + ("A" if rid[-1] != "A" else "B"))
    assert not a.mine("ns", "rr", f"{nonce}x:{replica}:{mac}")
    assert not ReplyIds(b"j" * 32, "aaaaaaaaaaaa").mine("ns", "rr", rid)  # another key
    assert len({a.new("ns", "rr") for _ in range(1000)}) == 1000


def test_run_log_keeps_the_history_and_every_started_run():
    log = RunLog(history=2)
    for i, r in enumerate(["a", "b", "c"]):
        log.apply(2 * i, {"run": r, "state": "started"})
        log.apply(2 * i + 1, {"run": r, "state": "finished", "result": "Succeeded"})
    log.apply(5, {"run": "z", "state": "started"})  # an offset read again: ignored
    assert list(log.runs) == ["b", "c"] and log.started == {"a", "b", "c"}
    log.apply(6, {"run": "d", "state": "started"})
    s = log.summary()
    assert (s["running"], s["succeeded"], s["failed"]) == (1, 2, 0)
    assert [r["run"] for r in s["runs"]] == ["d", "c", "b"]
    assert run_id("s", "1") == run_id("s", "1") != run_id("s", "2") != run_id("s2", "1")
