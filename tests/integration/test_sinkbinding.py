"""SinkBinding (docs/contract.md §6) and the sources' CLI: `rabbitmesh sinkbinding exec NAME --
CMD...` runs CMD with the binding's environment; `source ... create` builds full specs."""

from __future__ import annotations

import json
import sys

import pytest

from tests.integration.test_cli import one_error_line, rabbitmesh, rows
from tests.support.api import BROKERS, TRIGGERS, broker, call, trigger

pytestmark = pytest.mark.integration

SINKBINDINGS = "/apis/sources.knative.dev/v1/namespaces/{ns}/sinkbindings"
PRINT_ENV = (
    "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
    "('K_SINK', 'K_CE_OVERRIDES', 'NAME', 'NAMESPACE', 'KEEP')}))"
)


async def test_exec_runs_a_command_with_the_bindings_environment(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh("")
    s = mesh.url
    await call("POST", s + BROKERS.format(ns="default"), broker("br"))
    await call("POST", s + TRIGGERS.format(ns="default"), trigger("all", "br", sink.url))
    r = await rabbitmesh(
        "sinkbinding", "create", "bind", "--subject", "Deployment:apps/v1:producer",
        "--sink", "broker:br", "--ce-override", "team=a", server=s,
    )  # fmt: skip
    assert r.code == 0 and "SinkBinding 'bind' successfully created" in r.out, r
    (row,) = rows((await rabbitmesh("sinkbinding", "list", server=s)).out)
    assert row["SINK"] == "broker:br" and row["READY"] == "True"
    assert row["URI"] == mesh.settings.base_url + "/default/br"

    r = await rabbitmesh(
        "sinkbinding", "exec", "bind", "--", sys.executable, "-c", PRINT_ENV, server=s, KEEP="me"
    )
    assert r.code == 0, r
    assert json.loads(r.out) == {
        "K_SINK": mesh.settings.base_url + "/default/br",
        "K_CE_OVERRIDES": '{"extensions":{"team":"a"}}',
        "NAME": "bind",
        "NAMESPACE": "default",
        "KEEP": "me",  # the caller's environment stays
    }
    # A real producer finds its sink: one heartbeat through the broker to the trigger's sink.
    r = await rabbitmesh(
        "sinkbinding", "exec", "bind", "--", sys.executable, "-m", "rabbitmesh", "heartbeats",
        "--one-shot", server=s,
    )  # fmt: skip
    assert r.code == 0, r
    (got,) = await sink.wait_for(1)
    assert got.headers["ce-type"] == "dev.knative.eventing.samples.heartbeat"
    assert got.headers["ce-source"].endswith("#default/bind")
    assert got.headers["ce-team"] == "a"

    status, body = await call("GET", s + SINKBINDINGS.format(ns="default") + "/bind")
    assert body["status"]["sinkUri"] == mesh.settings.base_url + "/default/br"
    assert body["spec"]["subject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "producer",
    }


async def test_exec_refuses_a_binding_without_a_sink(start_mesh):
    mesh = await start_mesh("")
    r = await rabbitmesh(
        "sinkbinding", "create", "orphan", "--sink", "broker:nope", server=mesh.url
    )
    assert r.code == 0, r
    r = await rabbitmesh("sinkbinding", "exec", "orphan", "--", "true", server=mesh.url)
    line = one_error_line(r)
    assert "no resolved sink" in line and "NotFound" in line
    r = await rabbitmesh("sinkbinding", "exec", "missing", "--", "true", server=mesh.url)
    assert "not found" in one_error_line(r)


async def test_source_create_commands_build_full_specs(start_mesh, make_sink, tmp_path):
    sink = await make_sink()
    mesh = await start_mesh("")
    s = mesh.url
    r = await rabbitmesh(
        "source", "ping", "create", "tz", "--schedule", "0 9 * * 1-5", "--timezone",
        "Europe/Paris", "--data", '{"m": 1}', "--content-type", "application/json",
        "--sink", sink.url, server=s,
    )  # fmt: skip
    assert r.code == 0, r
    r = await rabbitmesh(
        "source", "ping", "create", "bad", "--timezone", "Nowhere/Land", "--sink", sink.url,
        server=s,
    )  # fmt: skip
    assert "spec.timezone" in one_error_line(r) and "unknown time zone" in r.err
    r = await rabbitmesh(
        "source", "container", "create", "img", "--image", "ghcr.io/me/app:1", "--runtime",
        "docker", "--sink", sink.url, server=s,
    )  # fmt: skip
    assert r.code == 0, r
    r = await rabbitmesh(
        "source", "apiserver", "create", "k8s", "--resource", "Pod:v1:app=web", "--owner",
        "ReplicaSet:apps/v1", "--namespace-selector", "team=a", "--mode", "Resource",
        "--sink", sink.url, server=s,
    )  # fmt: skip
    assert r.code == 0, r
    specs = {}
    for kind in ("pingsources", "containersources", "apiserversources"):
        r = await rabbitmesh("get", kind, "-o", "json", server=s)
        for item in json.loads(r.out)["items"]:
            specs[item["metadata"]["name"]] = item
    assert specs["tz"]["spec"]["timezone"] == "Europe/Paris"
    assert specs["tz"]["spec"]["contentType"] == "application/json"
    assert specs["img"]["metadata"]["annotations"] == {"rabbitmesh.dev/runtime": "docker"}
    k8s = specs["k8s"]["spec"]
    assert k8s["owner"] == {"apiVersion": "apps/v1", "kind": "ReplicaSet"}
    assert k8s["namespaceSelector"] == {"matchLabels": {"team": "a"}}
    assert k8s["resources"] == [
        {"apiVersion": "v1", "kind": "Pod", "selector": {"matchLabels": {"app": "web"}}}
    ]
    listed = {row["NAME"]: row for row in rows((await rabbitmesh("source", "list", server=s)).out)}
    assert listed["tz"]["READY"] == "True"
