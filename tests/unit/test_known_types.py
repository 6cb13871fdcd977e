"""Which event types get their own metric label (rabbitmesh/reconciler/known_types.py)."""

from __future__ import annotations

import textwrap

from rabbitmesh import metrics
from rabbitmesh.reconciler.known_types import known_types
from rabbitmesh.resources.loader import load_text

MANIFESTS = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: attrs}
spec: {broker: b, filter: {attributes: {type: com.example.attrs}}, subscriber: {uri: "http://s/"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: dialects}
spec:
  broker: b
  subscriber: {uri: "http://s/"}
  filters:
    - any:
        - exact: {type: com.example.exact}
        - cesql: "type IN ('com.example.in1', 'com.example.in2')"
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: prefix}
spec: {broker: b, filters: [{prefix: {type: com.example.}}], subscriber: {uri: "http://s/"}}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: ping}
spec: {schedule: "* * * * *", sink: {uri: "http://s/"}}
---
apiVersion: eventing.knative.dev/v1beta2
kind: EventType
metadata: {name: manual}
spec: {type: com.example.manual, broker: b}
---
apiVersion: eventing.knative.dev/v1beta2
kind: EventType
metadata: {name: auto}
spec: {type: com.example.auto, broker: b}
"""


def test_configured_types_in_trust_order_and_nothing_else():
    resources = load_text(textwrap.dedent(MANIFESTS), "t.yaml")
    auto = {("EventType", "default", "auto")}
    types = list(known_types(resources, auto))
    assert types == [
        "com.example.attrs",
        "com.example.exact",
        "com.example.in1",
        "com.example.in2",
        "dev.knative.sources.ping",
        "com.example.manual",
        "com.example.auto",  # chosen by senders: last
    ]


def test_labels_are_the_known_types_only_and_capped(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_EVENT_TYPES", 2)
    try:
        metrics.set_known_types(["a", "b", "c"])
        assert [metrics.bounded_type(t) for t in "abcz"] == ["a", "b", "other", "other"]
    finally:
        metrics.set_known_types([])
