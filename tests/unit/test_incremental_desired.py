"""The incremental desired set and the dependency index (rabbitmesh/reconciler/)."""

from __future__ import annotations

import textwrap

from rabbitmesh.resources.loader import load_text
from rabbitmesh.store.desired import Desired
from rabbitmesh.store.manifests import key_of, to_manifest
from rabbitmesh.store.state import Entry

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {eventing.knative.dev/injection: enabled}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: b
  namespace: team
  annotations: {rabbitmesh.dev/ingress-token-secret: tokens}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t1, namespace: team}
spec: {broker: b, subscriber: {uri: "http://x/"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t2, namespace: team}
spec: {broker: default, subscriber: {uri: "http://x/"}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {name: s, namespace: team}
spec:
  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}
  subscriber: {ref: {apiVersion: v1, kind: Service, name: svc}}
  reply: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: b}}
"""


def entries(version: int = 0) -> dict:
    out = {}
    for i, res in enumerate(load_text(textwrap.dedent(MANIFESTS), "test.yaml")):
        kind, ns, name = key_of(res)
        out[(kind, ns, name)] = Entry(
            kind, ns, name, to_manifest(res), "api", "", f"uid-{name}", 1, version + i, ""
        )
    return out


def test_update_takes_in_only_the_changed_keys_and_keeps_the_rest() -> None:
    desired = Desired()
    state = entries()
    changed = desired.update(state, set(state))
    injected = ("Broker", "team", "default")
    assert changed == set(state) | {injected}
    t1 = desired.current[("Trigger", "team", "t1")]
    # A new version of t2 only: one key changed, every other object is the same one.
    t2 = state[("Trigger", "team", "t2")]
    state[t2.key] = Entry(**{**t2.__dict__, "resource_version": 99})
    assert desired.update(state, {t2.key}) == {t2.key}
    assert desired.current[("Trigger", "team", "t1")] is t1
    # Deleting the Namespace takes its injected broker with it.
    del state[("Namespace", "", "team")]
    assert desired.update(state, {("Namespace", "", "team")}) == {
        ("Namespace", "", "team"),
        injected,
    }
    assert injected not in desired.current and not desired.is_derived(injected)


def test_dependents_follow_references() -> None:
    desired = Desired()
    state = entries()
    desired.update(state, set(state))
    deps = desired.dependencies
    assert deps.dependents(("Broker", "team", "b")) == {
        ("Trigger", "team", "t1"),
        ("Subscription", "team", "s"),  # its reply
    }
    assert deps.dependents(("Broker", "team", "default")) == {("Trigger", "team", "t2")}
    assert deps.dependents(("Channel", "team", "c")) == {("Subscription", "team", "s")}
    # A Broker reads its ingress-token Secret (an annotation): any Secret of its namespace.
    assert ("Broker", "team", "b") in deps.dependents(("Secret", "team", "tokens"))
    assert deps.dependents(("Secret", "other", "tokens")) == set()
    # A Trigger moved to another broker leaves the old one's dependents.
    t1 = state[("Trigger", "team", "t1")]
    manifest = {**t1.manifest, "spec": {**t1.manifest["spec"], "broker": "default"}}
    state[t1.key] = Entry(**{**t1.__dict__, "manifest": manifest, "resource_version": 50})
    desired.update(state, {t1.key})
    assert ("Trigger", "team", "t1") not in deps.dependents(("Broker", "team", "b"))
    assert ("Trigger", "team", "t1") in deps.dependents(("Broker", "team", "default"))
