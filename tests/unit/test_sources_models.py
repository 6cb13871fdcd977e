"""Source manifests: validation as Knative validates them, and what each model derives."""

from __future__ import annotations

import textwrap

import pytest

from rabbitmesh.resources.loader import ManifestError, load_text
from rabbitmesh.resources.sources import (
    ApiServerSource,
    ContainerSource,
    EnvVar,
    GitLabSource,
    LabelSelector,
    PingSource,
    SecretKeyRef,
)


def load(text: str):
    (res,) = load_text(textwrap.dedent(text), "test.yaml")
    return res


def error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load(text)
    return info.value


def ping(spec: str) -> str:
    return f"""
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {{name: p}}
        spec: {{sink: {{uri: "http://x/"}}, {spec}}}
        """


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ('schedule: "* * * *"', "spec.schedule", "4 fields"),
        ('schedule: "* * * * * * *"', "spec.schedule", "7 fields"),
        ('schedule: "70 * * * * *"', "spec.schedule", "invalid cron expression"),
        ('schedule: "0 0 31 2 *"', "spec.schedule", "invalid cron expression"),
        ('schedule: "@every 1m"', "spec.schedule", "unsupported descriptor @every"),
        ('schedule: "@sometimes"', "spec.schedule", "unknown descriptor"),
        ("timezone: Mars/Base", "spec.timezone", "unknown time zone 'Mars/Base'"),
        ("data: a, dataBase64: YQ==", "spec.data", "mutually exclusive"),
        ('dataBase64: "%%%"', "spec.dataBase64", "not valid base64"),
        ("contentType: application/json, data: '[1]'", "spec.data", "JSON object"),
        ("contentType: application/json, dataBase64: e30x", "spec.dataBase64", "JSON"),
        ("ceOverrides: {extensions: {type: x}}", "spec.ceOverrides.extensions.type", "attribute"),
        (
            "ceOverrides: {extensions: {my_ext: x}}",
            "spec.ceOverrides.extensions.my_ext",
            "lowercase",
        ),
    ],
)
def test_invalid_ping_sources_name_the_field(spec, field, words):
    e = error(ping(spec))
    assert e.field == field, str(e)
    assert words in e.message, str(e)


def test_ping_source_defaults_and_payload():
    p = load(
        """
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {name: p}
        spec:
          sink: {uri: "http://x/"}
          dataBase64: |
            aGVs
            bG8=
        """
    )
    assert isinstance(p, PingSource)
    assert p.spec.schedule == "* * * * *"  # Knative's default: every minute
    assert p.payload() == b"hello"  # base64 split over lines, as YAML block scalars give it
    p = load(ping('schedule: "*/3 * * * * *", timezone: Europe/Paris, data: hi'))
    assert p.payload() == b"hi" and p.spec.timezone == "Europe/Paris"
    assert load(ping('schedule: "@hourly"')).spec.schedule == "@hourly"
    assert load(ping("")).payload() is None


def container(containers: str, annotations: str = "{}") -> str:
    return f"""
        apiVersion: sources.knative.dev/v1
        kind: ContainerSource
        metadata: {{name: cs, annotations: {annotations}}}
        spec:
          sink: {{uri: "http://x/"}}
          template: {{spec: {{containers: {containers}}}}}
        """


def test_container_source_reads_each_container():
    cs = load(
        container(
            """[
              {name: a, image: img, command: [run], args: [--port, 8080], workingDir: /tmp,
               env: [{name: X, value: "1"}, {name: N, valueFrom: {fieldRef: {fieldPath: metadata.name}}},
                     {name: S, valueFrom: {secretKeyRef: {name: s, key: k, optional: true}}}]},
              {command: [b]}]"""  # noqa: E501
        )
    )
    assert isinstance(cs, ContainerSource)
    a, b = cs.containers()
    assert (a.name, a.image, a.command, a.args, a.working_dir) == (
        "a",
        "img",
        ("run",),
        ("--port", "8080"),
        "/tmp",
    )
    assert a.env == (
        EnvVar("X", value="1"),
        EnvVar("N", field_path="metadata.name"),
        EnvVar("S", secret=SecretKeyRef("s", "k", True)),
    )
    assert b.name == "cs-1" and b.image is None


@pytest.mark.parametrize(
    ("containers", "annotations", "field", "words"),
    [
        ("[]", "{}", "spec.template.spec.containers", "at least one"),
        ("[{name: a}]", "{}", "spec.template.spec.containers[0]", "image"),
        ("[{command: x}]", "{}", "spec.template.spec.containers[0].command", "list"),
        (
            "[{command: [x], env: [{name: P, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]}]",
            "{}",
            "spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
            "not supported",
        ),
        (
            "[{command: [x], env: [{name: C, valueFrom: {configMapKeyRef: {name: c, key: k}}}]}]",
            "{}",
            "spec.template.spec.containers[0].env[0].valueFrom",
            "secretKeyRef",
        ),
        ("[{name: a, command: [x]}, {name: a, command: [y]}]", "{}", "", "unique"),
        ("[{command: [x]}]", "{rabbitmesh.dev/runtime: vm}", "metadata.annotations", "vm"),
    ],
)
def test_invalid_container_sources_name_the_field(containers, annotations, field, words):
    e = error(container(containers, annotations))
    assert e.field.startswith(field), str(e)
    assert words in e.message, str(e)


def test_label_selectors_as_queries_and_matches():
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "skip", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "team", "operator": "Exists"},
            ],
        }
    )
    assert sel.query() == "app=web,tier=front,env in (dev,prod),!skip,zone notin (b),team"
    base = {"app": "web", "tier": "front", "env": "prod", "team": "x"}
    assert sel.matches(base)
    assert not sel.matches({**base, "skip": "1"})
    assert not sel.matches({**base, "env": "test"})
    assert not sel.matches({**base, "zone": "b"})
    assert sel.matches({**base, "zone": "a"})
    assert not sel.matches({k: v for k, v in base.items() if k != "team"})
    assert LabelSelector().empty and LabelSelector().query() == ""


def apiserver(spec: str) -> str:
    return f"""
        apiVersion: sources.knative.dev/v1
        kind: ApiServerSource
        metadata: {{name: k}}
        spec: {{sink: {{uri: "http://x/"}}, {spec}}}
        """


def test_api_server_source_validation_and_declared_types():
    src = load(apiserver("resources: [{apiVersion: v1, kind: Pod}], mode: Resource"))
    assert isinstance(src, ApiServerSource)
    assert [t for t, _ in src.declared_event_types()] == [
        "dev.knative.apiserver.resource.add",
        "dev.knative.apiserver.resource.update",
        "dev.knative.apiserver.resource.delete",
    ]
    assert load(apiserver("resources: [{apiVersion: v1, kind: Pod}]")).spec.mode == "Reference"
    cases = [
        ("resources: []", "spec.resources", "at least 1"),
        ("resources: [{apiVersion: a/b/c, kind: Pod}]", "spec.resources[0].apiVersion", "GROUP"),
        ("resources: [{apiVersion: v1, kind: ' '}]", "spec.resources[0].kind", "required"),
        ("resources: [{apiVersion: v1, kind: Pod}], mode: Ref", "spec.mode", "Reference"),
        (
            "resources: [{apiVersion: v1, kind: Pod}], owner: {apiVersion: '', kind: RS}",
            "spec.owner.apiVersion",
            "invalid",
        ),
        (
            "resources: [{apiVersion: v1, kind: Pod, selector: "
            "{matchExpressions: [{key: a, operator: In}]}}]",
            "spec.resources[0].selector.matchExpressions[0]",
            "needs values",
        ),
        (
            "resources: [{apiVersion: v1, kind: Pod}], filters: [{cesql: 'type ='}]",
            "spec.filters[0].cesql",
            "",
        ),
    ]
    for spec, field, words in cases:
        e = error(apiserver(spec))
        assert e.field == field, (spec, str(e))
        assert words in e.message, (spec, str(e))


def gitlab(spec: str) -> str:
    return f"""
        apiVersion: sources.knative.dev/v1alpha1
        kind: GitLabSource
        metadata: {{name: g}}
        spec: {{sink: {{uri: "http://x/"}}, {spec}}}
        """


def test_gitlab_source_validation_and_declared_types():
    src = load(
        gitlab(
            "projectUrl: https://gitlab.com/grp/app, eventTypes: [push_events, issues_events, "
            "confidential_issues_events, job_events], accessToken: {secretKeyRef: {name: s, "
            "key: a}}, secretToken: {secretKeyRef: {name: s, key: t}}, sslverify: false"
        )
    )
    assert isinstance(src, GitLabSource)
    assert src.declared_event_types() == [
        (f"dev.knative.sources.gitlab.{t}", "https://gitlab.com/grp/app")
        for t in ("confidential_issue", "issue", "job", "push")
    ]
    for spec, field in [
        ("projectUrl: gitlab.com/app, eventTypes: [push_events]", "spec.projectUrl"),
        ("projectUrl: https://gitlab.com/, eventTypes: [push_events]", "spec.projectUrl"),
        ("projectUrl: https://gitlab.com/a/b, eventTypes: [push]", "spec.eventTypes[0]"),
        ("projectUrl: https://gitlab.com/a/b, eventTypes: []", "spec.eventTypes"),
        (
            "projectUrl: https://gitlab.com/a/b, eventTypes: [push_events], "
            "accessToken: {secretKeyRef: {name: s}}",
            "spec.accessToken.secretKeyRef.key",
        ),
    ]:
        assert error(gitlab(spec)).field == field, spec
