"""EventType (v1beta2/v1beta3), Secret, Namespace and source models; the desired set."""

from __future__ import annotations

import textwrap

import pytest
from aiohttp.test_utils import make_mocked_request

from rabbitmesh.api.auth import check_mutation
from rabbitmesh.api.errors import ApiError
from rabbitmesh.resources.core import Secret
from rabbitmesh.resources.loader import ManifestError, load_text
from rabbitmesh.settings import Settings
from rabbitmesh.store.desired import Desired, event_type_name
from rabbitmesh.store.manifests import key_of, to_manifest
from rabbitmesh.store.state import Entry


def load(text: str):
    return load_text(textwrap.dedent(text), "t.yaml")


def error(text: str) -> str:
    with pytest.raises(ManifestError) as e:
        load(text)
    return str(e.value)


def test_event_type_versions():
    v2, v3 = load("""
        apiVersion: eventing.knative.dev/v1beta2
        kind: EventType
        metadata: {name: a}
        spec: {type: com.example.a, source: /src, broker: br, schema: http://s/1}
        ---
        apiVersion: eventing.knative.dev/v1beta3
        kind: EventType
        metadata: {name: b}
        spec:
          reference: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: br}
          attributes:
            - {name: type, value: com.example.b, required: true}
            - {name: source, value: /b}
            - {name: specversion, value: "1.0"}
            - {name: id, required: true}
        """)
    assert (v2.ce_type, v2.ce_source, v2.ref.kind, v2.ref.name) == (
        "com.example.a",
        "/src",
        "Broker",
        "br",
    )
    assert (v3.ce_type, v3.ce_source, v3.ref.name) == ("com.example.b", "/b", "br")
    assert to_manifest(v2)["spec"]["schema"] == "http://s/1"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            "apiVersion: eventing.knative.dev/v1beta2\nkind: EventType\nmetadata: {name: a}\n"
            "spec: {source: /x}",
            "spec.type: is required",
        ),
        (
            "apiVersion: eventing.knative.dev/v1beta3\nkind: EventType\nmetadata: {name: a}\n"
            "spec: {attributes: [{name: type, value: t}]}",
            "spec.attributes: missing attribute definitions: source, specversion, id",
        ),
        (
            "apiVersion: eventing.knative.dev/v1beta3\nkind: EventType\nmetadata: {name: a}\n"
            "spec: {type: t}",
            "spec.type: is a field of eventing.knative.dev/v1beta2",
        ),
    ],
)
def test_event_type_validation(doc, expected):
    assert expected in error(doc)


def test_secret_string_data_is_stored_as_data_and_never_printed():
    (s,) = load("""
        apiVersion: v1
        kind: Secret
        metadata: {name: s}
        stringData: {token: hunter2}
        """)
    assert isinstance(s, Secret) and s.value("token") == "hunter2"
    stored = to_manifest(s)
    assert stored["data"] == {"token": "aHVudGVyMg=="} and "stringData" not in stored
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert "aHVudGVyMg" not in repr(s)
    bad = error("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: 'not base64!'}")
    assert "data.k: must be base64-encoded" in bad and "not base64!" not in bad


def test_namespace_is_cluster_scoped():
    (ns,) = load("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n")
    assert key_of(ns) == ("Namespace", "", "team-a")
    assert "namespace" not in to_manifest(ns)["metadata"]


def test_ping_source_validation_and_declared_types():
    assert "spec.schedule: invalid cron expression" in error("""
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {name: p}
        spec: {schedule: "every minute", sink: {uri: "http://x/"}}
        """)
    (p,) = load("""
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {name: p, namespace: team}
        spec: {schedule: "*/2 * * * *", sink: {ref: {apiVersion: v1, kind: Service, name: s}}}
        """)
    assert p.declared_event_types() == [
        ("dev.knative.sources.ping", "/apis/v1/namespaces/team/pingsources/p")
    ]


def entry(res, version: int, origin: str = "api") -> Entry:
    kind, ns, name = key_of(res)
    return Entry(kind, ns, name, to_manifest(res), origin, "", f"uid-{name}", 1, version, "")


def test_desired_set_derives_injected_brokers_and_source_event_types():
    ns, ping = load("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: team, labels: {eventing.knative.dev/injection: enabled}}
        ---
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {name: p, namespace: team}
        spec:
          schedule: "* * * * *"
          sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
        """)
    desired = Desired()
    out = {key_of(r): r for r in desired.build([entry(ns, 0), entry(ping, 1)])}
    broker = out[("Broker", "team", "default")]
    assert broker.metadata.labels == {"eventing.knative.dev/namespaceInjected": "true"}
    assert broker.metadata.owner_references[0]["kind"] == "Namespace"
    name = event_type_name(
        "p",
        "team",
        "dev.knative.sources.ping",
        ping_source := ("/apis/v1/namespaces/team/pingsources/p"),
    )
    et = out[("EventType", "team", name)]
    assert et.ce_type == "dev.knative.sources.ping" and et.ce_source == ping_source
    assert et.ref.kind == "Broker" and et.ref.name == "default"
    assert desired.derived_keys == {("Broker", "team", "default"), ("EventType", "team", name)}
    # Rebuilding with nothing changed hands back the very same objects (statuses survive).
    again = {key_of(r): r for r in desired.build([entry(ns, 0), entry(ping, 1)])}
    assert again[("Broker", "team", "default")] is broker
    # Without the label, the broker goes.
    ns.metadata.labels = {}
    later = {key_of(r) for r in desired.build([entry(ns, 2), entry(ping, 1)])}
    assert ("Broker", "team", "default") not in later


def test_orphaned_auto_event_types_are_left_out():
    (et,) = load("""
        apiVersion: eventing.knative.dev/v1beta3
        kind: EventType
        metadata:
          name: et-x
          ownerReferences: [{apiVersion: eventing.knative.dev/v1, kind: Broker, name: gone}]
        spec:
          attributes: [{name: type, value: t}, {name: source}, {name: specversion}, {name: id}]
        """)
    assert Desired().build([entry(et, 0, origin="auto")]) == []
    assert len(Desired().build([entry(et, 0, origin="api")])) == 1


def request(method: str, remote: str, auth: str | None = None, **headers: str):
    given = {k.replace("_", "-"): v for k, v in headers.items()}
    headers = {"Host": "localhost:8080", "Content-Type": "application/json", **given}
    if auth:
        headers["Authorization"] = auth
    headers = {k: v for k, v in headers.items() if v}
    req = make_mocked_request(method, "/apply", headers=headers)
    req._transport_peername = (remote, 1234)  # what request.remote reads
    return req


def settings(token: str | None = None, **kw: object) -> Settings:
    return Settings(admin_token=token, **kw)


def refused(req, s: Settings) -> int:
    with pytest.raises(ApiError) as e:
        check_mutation(req, s)
    return e.value.status


def test_mutations_need_the_token_when_set_and_loopback_otherwise():
    check_mutation(request("GET", "10.0.0.9"), settings())  # reading is open
    check_mutation(request("POST", "127.0.0.1"), settings())
    check_mutation(request("DELETE", "::1", Content_Type=""), settings())  # no body, no type
    assert refused(request("POST", "10.0.0.9"), settings()) == 403
    for auth in (None, "Bearer wrong", "Basic c2VjcmV0", "secret"):
        assert refused(request("PUT", "127.0.0.1", auth), settings("secret")) == 401
    check_mutation(request("PUT", "10.0.0.9", "Bearer secret"), settings("secret"))
    # Not trusting loopback: the token or nothing.
    assert refused(request("POST", "127.0.0.1"), settings(admin_trust_loopback=False)) == 403
    check_mutation(
        request("POST", "127.0.0.1", "Bearer t"), settings("t", admin_trust_loopback=False)
    )


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1", "127.0.0.2:80", "[::1]:8080"])
def test_loopback_hosts_are_trusted(host):
    check_mutation(request("POST", "127.0.0.1", Host=host), settings())


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example:8080", "0.0.0.0", ""])
def test_other_hosts_are_refused_without_a_token(host):
    """DNS rebinding: the request comes from loopback but names another site."""
    assert refused(request("POST", "127.0.0.1", Host=host), settings()) == 421
    check_mutation(request("POST", "127.0.0.1", "Bearer t", Host=host), settings("t"))
    public = settings(public_url="https://mesh.example.com")
    check_mutation(request("POST", "127.0.0.1", Host="mesh.example.com"), public)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:3000"},  # another local web app is another site
        {"Sec_Fetch_Site": "cross-site"},
        {"Sec_Fetch_Site": "same-site"},
    ],
)
def test_changes_from_pages_of_other_sites_are_refused_token_or_not(headers):
    assert refused(request("POST", "127.0.0.1", **headers), settings()) == 403
    assert refused(request("POST", "10.0.0.9", "Bearer t", **headers), settings("t")) == 403


def test_same_origin_and_public_url_origins_are_not_foreign():
    check_mutation(request("POST", "127.0.0.1", Origin="http://localhost:8080"), settings())
    check_mutation(request("POST", "127.0.0.1", Sec_Fetch_Site="same-origin"), settings())
    public = settings("t", public_url="https://mesh.example.com")
    check_mutation(
        request("POST", "10.0.0.9", "Bearer t", Host="lb:80", Origin="https://mesh.example.com"),
        public,
    )


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_changes_need_a_json_or_yaml_body(ctype):
    assert refused(request("POST", "127.0.0.1", Content_Type=ctype), settings()) == 415
    assert (
        refused(request("PUT", "127.0.0.1", "Bearer t", Content_Type=ctype), settings("t")) == 415
    )
    for ok in ("application/json; charset=utf-8", "application/yaml", "text/yaml"):
        check_mutation(request("POST", "127.0.0.1", Content_Type=ok), settings())
