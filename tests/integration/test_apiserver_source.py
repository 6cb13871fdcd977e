"""ApiServerSource (docs/contract.md §6) against a fake Kubernetes API server that speaks the real
list/watch protocol (tests/support/fake_k8s.py), real RabbitMQ and real HTTP sinks."""

from __future__ import annotations

import json

import jwt
import pytest

from tests.support.api import call, ready
from tests.support.fake_k8s import FakeKube
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

APISERVERSOURCES = "/apis/sources.knative.dev/v1/namespaces/{ns}/apiserversources"


@pytest.fixture
async def kube():
    fake = await FakeKube().start()
    yield fake
    await fake.stop()


def source(name: str, sink: str, resources: list[dict], **spec: object) -> dict:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ApiServerSource",
        "metadata": {"name": name},
        "spec": {"resources": resources, "sink": {"uri": sink}, **spec},
    }


def seen(sink) -> list[tuple[str, str]]:
    """(type, subject) of every event the sink received."""
    return [(r.headers["ce-type"], r.headers["ce-subject"]) for r in sink.received]


async def start(start_mesh, kube: FakeKube, tmp_path, body: dict):
    mesh = await start_mesh("", kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"))
    status, created = await call("POST", mesh.url + APISERVERSOURCES.format(ns="default"), body)
    assert status == 201 and ready(created) == ("True", None), created
    # Watching once the first list is in: what existed before is no event.
    await eventually(lambda: kube.watch_requests(), what="the watch")
    return mesh


async def test_reference_mode_events_as_knative_emits_them(start_mesh, make_sink, kube, tmp_path):
    sink = await make_sink()
    kube.create("Pod", "before", labels={"app": "web"})
    mesh = await start(
        start_mesh,
        kube,
        tmp_path,
        source(
            "pods",
            sink.url,
            [{"apiVersion": "v1", "kind": "Pod", "selector": {"matchLabels": {"app": "web"}}}],
            ceOverrides={"extensions": {"team": "ops"}},
        ),
    )
    kube.create("Pod", "web-1", labels={"app": "web"})
    kube.create("Pod", "db-1", labels={"app": "db"})  # not selected
    kube.create("Pod", "web-elsewhere", namespace="other", labels={"app": "web"})  # not watched
    kube.update("Pod", "web-1", labels={"app": "web", "v": "2"})
    kube.delete("Pod", "web-1")
    await sink.wait_for(3)
    assert seen(sink) == [
        ("dev.knative.apiserver.ref.add", "/apis/v1/namespaces/default/pods/web-1"),
        ("dev.knative.apiserver.ref.update", "/apis/v1/namespaces/default/pods/web-1"),
        ("dev.knative.apiserver.ref.delete", "/apis/v1/namespaces/default/pods/web-1"),
    ]
    for r in sink.received:
        assert r.headers["ce-source"] == kube.url
        assert r.headers["ce-kind"] == "Pod"
        assert r.headers["ce-name"] == "web-1"
        assert r.headers["ce-namespace"] == "default"
        assert r.headers["ce-team"] == "ops"
        assert r.headers["content-type"] == "application/json"
        assert json.loads(r.body) == {
            "kind": "Pod",
            "namespace": "default",
            "name": "web-1",
            "apiVersion": "v1",
        }
    assert kube.watch_requests()[0]["labelSelector"] == "app=web"
    res = mesh.server.ctx.get("ApiServerSource", "default", "pods")
    extra = res.status.model_extra
    assert extra["sinkUri"] == sink.url and extra["namespaces"] == ["default"]
    assert {a["type"] for a in extra["ceAttributes"]} == {
        f"dev.knative.apiserver.ref.{op}" for op in ("add", "update", "delete")
    }
    assert {a["source"] for a in extra["ceAttributes"]} == {kube.url}


async def test_resource_mode_with_an_owner_filter(start_mesh, make_sink, kube, tmp_path):
    sink = await make_sink()
    await start(
        start_mesh,
        kube,
        tmp_path,
        source(
            "owned",
            sink.url,
            [{"apiVersion": "v1", "kind": "Pod"}, {"apiVersion": "apps/v1", "kind": "Deployment"}],
            mode="Resource",
            owner={"apiVersion": "apps/v1", "kind": "ReplicaSet"},
        ),
    )
    await eventually(lambda: len(kube.watch_requests()) == 2, what="two watches")
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc"}
    kube.create("Pod", "orphan")
    kube.create("Pod", "by-job", owner={"apiVersion": "batch/v1", "kind": "Job", "name": "j"})
    created = kube.create("Pod", "web-abc-1", owner=rs, spec={"nodeName": "n1"})
    kube.create("Deployment", "web", api_version="apps/v1")  # no owner: filtered out
    kube.create("Deployment", "owned", api_version="apps/v1", owner={**rs, "name": "strange"})
    await sink.wait_for(2)
    subjects = sorted(seen(sink))
    assert subjects == [
        (
            "dev.knative.apiserver.resource.add",
            "/apis/apps/v1/namespaces/default/deployments/owned",
        ),
        ("dev.knative.apiserver.resource.add", "/apis/v1/namespaces/default/pods/web-abc-1"),
    ]
    pod = next(r for r in sink.received if r.headers["ce-name"] == "web-abc-1")
    assert json.loads(pod.body) == created  # the whole object


async def test_namespace_selector_follows_namespace_labels(start_mesh, make_sink, kube, tmp_path):
    sink = await make_sink()
    kube.create("Namespace", "team-a", namespace=None, labels={"team": "a"})
    kube.create("Namespace", "team-b", namespace=None, labels={"team": "b"})
    mesh = await start(
        start_mesh,
        kube,
        tmp_path,
        source(
            "teams",
            sink.url,
            [{"apiVersion": "v1", "kind": "ConfigMap"}],
            namespaceSelector={"matchLabels": {"team": "a"}},
        ),
    )
    await eventually(lambda: len(kube.watch_requests()) == 2, what="two watches")
    kube.create("ConfigMap", "b-before", namespace="team-b")
    kube.create("ConfigMap", "a-1", namespace="team-a")
    await sink.wait_for(1)
    kube.update("Namespace", "team-b", namespace=None, labels={"team": "a"})
    res = mesh.server.ctx.get("ApiServerSource", "default", "teams")
    await eventually(
        lambda: res.status.model_extra.get("namespaces") == ["team-a", "team-b"],
        what="team-b watched",
    )
    kube.create("ConfigMap", "b-after", namespace="team-b")
    await sink.wait_for(2)
    assert [r.headers["ce-subject"] for r in sink.received] == [
        "/apis/v1/namespaces/team-a/configmaps/a-1",
        "/apis/v1/namespaces/team-b/configmaps/b-after",
    ]


@pytest.mark.parametrize("gone_as", ["event", "http"])
async def test_resumes_from_the_last_version_and_relists_on_410_without_gaps_or_duplicates(
    start_mesh, make_sink, tmp_path, gone_as
):
    kube = await FakeKube(gone_as=gone_as).start()
    try:
        sink = await make_sink()
        kube.create("ConfigMap", "old")
        kube.create("ConfigMap", "kept")
        await start(
            start_mesh,
            kube,
            tmp_path,
            source(
                "cms",
                sink.url,
                [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "selector": {
                            "matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]
                        },
                    }
                ],
            ),
        )
        assert len(kube.list_requests()) == 1
        a = kube.create("ConfigMap", "a")
        await sink.wait_for(1)

        # 1. The stream ends (as at timeoutSeconds): the next watch resumes right after `a`.
        kube.end_watches()
        await eventually(lambda: len(kube.watch_requests()) == 2, what="a second watch")
        assert kube.watch_requests()[1]["resourceVersion"] == a["metadata"]["resourceVersion"]
        kube.create("ConfigMap", "b")
        await sink.wait_for(2)

        # 2. Only unselected changes, then a bookmark: after a broken connection the watch
        # resumes from the bookmark's version, not from `b`'s.
        kube.create("ConfigMap", "hidden", labels={"skip": "yes"})
        bookmark_version = str(kube.version)
        kube.bookmark()
        kube.break_watches()
        await eventually(lambda: len(kube.watch_requests()) == 3, what="a third watch")
        assert kube.watch_requests()[2]["resourceVersion"] == bookmark_version

        # 3. Disconnected while things change and the history is compacted: 410, list again,
        # and exactly the changes missed come out.
        kube.open.clear()
        kube.break_watches()
        kube.create("ConfigMap", "c")
        kube.update("ConfigMap", "kept", data={"k": "v"})
        kube.delete("ConfigMap", "old")
        kube.compact()
        kube.open.set()
        await sink.wait_for(5)
        assert len(kube.list_requests()) == 2
        kube.create("ConfigMap", "d")
        await sink.wait_for(6)
        events = seen(sink)
        assert events[:2] == [
            ("dev.knative.apiserver.ref.add", "/apis/v1/namespaces/default/configmaps/a"),
            ("dev.knative.apiserver.ref.add", "/apis/v1/namespaces/default/configmaps/b"),
        ]
        assert sorted(events[2:5]) == [
            ("dev.knative.apiserver.ref.add", "/apis/v1/namespaces/default/configmaps/c"),
            ("dev.knative.apiserver.ref.delete", "/apis/v1/namespaces/default/configmaps/old"),
            ("dev.knative.apiserver.ref.update", "/apis/v1/namespaces/default/configmaps/kept"),
        ]
        assert events[5:] == [
            ("dev.knative.apiserver.ref.add", "/apis/v1/namespaces/default/configmaps/d")
        ]
    finally:
        await kube.stop()


async def test_events_carry_the_sources_identity_with_oidc(start_mesh, make_sink, kube, tmp_path):
    """With authentication-oidc, an ApiServerSource's events carry a token of its own
    identity for the sink's audience, as Knative gives each source one."""
    sink = await make_sink()
    mesh = await start_mesh(
        "", kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"), authentication_oidc=True
    )
    body = source("pods", sink.url, [{"apiVersion": "v1", "kind": "Pod"}])
    body["spec"]["sink"]["audience"] = "my-sink"
    status, created = await call("POST", mesh.url + APISERVERSOURCES.format(ns="default"), body)
    assert status == 201, created
    await eventually(lambda: kube.watch_requests(), what="the watch")
    kube.create("Pod", "web-1")
    (got,) = await sink.wait_for(1)
    token = got.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})  # signature: test_oidc.py
    assert claims["aud"] == "my-sink"
    assert claims["sub"] == (
        "system:serviceaccount:default:pods-oidc-sources.knative.dev-apiserversource"
    )
