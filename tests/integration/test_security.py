"""Security (docs/security.md): HTTPS, amqps://, per-broker ingress tokens, the admin API
from other hosts, destinations that must be http(s), and secrets kept out of the logs."""

from __future__ import annotations

import base64
import logging
import signal
import socket
import ssl
import textwrap
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support.api import BROKERS, SECRETS, TRIGGERS, broker, call, ready, trigger
from tests.support.events import binary_headers, post
from tests.support.manifests import broker_and_trigger as shared_broker_and_trigger
from tests.support.mesh import AMQP_URL, InProcessMesh, MeshProcess, write_manifests
from tests.support.sink import Reply
from tests.support.tcpproxy import TcpProxy
from tests.support.tls import Pki, make_pki
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NS = "default"


def broker_and_trigger(sink_url: str, annotations: str = "") -> str:
    return shared_broker_and_trigger(
        sink_url, trigger="tr", delivery="{retry: 0}", broker_annotations=annotations
    )


# --- HTTPS ------------------------------------------------------------------------------------


async def test_https_ingress_with_a_self_signed_certificate(tmp_path, prefix, make_sink):
    pki = make_pki(tmp_path / "pki")
    sink = await make_sink()
    write_manifests(tmp_path / "c", broker_and_trigger(sink.url))
    mesh = InProcessMesh(
        tmp_path / "c", prefix, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    await mesh.start(ready=False)
    url = f"https://localhost:{mesh.port}"
    trusting = ssl.create_default_context(cafile=pki.ca)
    try:
        async with aiohttp.ClientSession() as s:

            async def is_ready() -> bool:
                async with s.get(url + "/readyz", ssl=trusting) as r:
                    return r.status == 200

            await eventually(is_ready, timeout=20, what="ready over HTTPS")
            async with s.post(
                url + "/default/br", headers=binary_headers(id_="tls-1"), data=b"{}", ssl=trusting
            ) as r:
                assert r.status == 202
            await sink.wait_for(1)
            assert sink.ids() == ["tls-1"]
            # The status URL says https, and a client that does not trust the CA is refused.
            assert mesh.server.settings.base_url == f"https://localhost:{mesh.port}"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await s.get(url + "/healthz", ssl=ssl.create_default_context())
            # Plain HTTP on the HTTPS port gets no HTTP answer.
            with pytest.raises(aiohttp.ClientError):
                await s.get(f"http://localhost:{mesh.port}/healthz")
    finally:
        await mesh.stop()


# --- amqps:// ---------------------------------------------------------------------------------


async def tls_front_of_rabbitmq(pki_dir: Path) -> tuple[TcpProxy, Pki]:
    """A TLS listener that wants a client certificate, in front of the test RabbitMQ."""
    pki = make_pki(pki_dir, "rabbit")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    target = URL(AMQP_URL)
    proxy = await TcpProxy(target.host or "127.0.0.1", target.port or 5672, server).start()
    return proxy, pki


def amqps_url(port: int) -> str:
    target = URL(AMQP_URL)
    return str(target.with_scheme("amqps").with_host("localhost").with_port(port))


async def test_amqps_with_a_ca_file_and_a_client_certificate(tmp_path, prefix, make_sink):
    proxy, pki = await tls_front_of_rabbitmq(tmp_path / "pki")
    sink = await make_sink()
    write_manifests(tmp_path / "c", broker_and_trigger(sink.url))
    mesh = InProcessMesh(
        tmp_path / "c",
        prefix,
        amqp_url=amqps_url(proxy.port),
        amqp_ca_file=pki.ca,
        amqp_cert_file=pki.client_cert,
        amqp_key_file=pki.client_key,
    )
    try:
        await mesh.start()
        status, _, _ = await post(
            mesh.url + "/default/br", headers=binary_headers(id_="amqps-1"), body=b"{}"
        )
        assert status == 202
        await sink.wait_for(1)
        assert sink.ids() == ["amqps-1"]
    finally:
        await mesh.stop()
        await proxy.stop()


async def test_amqps_refuses_a_server_its_ca_did_not_sign(tmp_path, prefix, caplog):
    caplog.set_level(logging.WARNING, logger="rabbitmesh.amqp")
    proxy, _ = await tls_front_of_rabbitmq(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "other")
    write_manifests(tmp_path / "c", "")
    mesh = InProcessMesh(
        tmp_path / "c",
        prefix,
        amqp_url=amqps_url(proxy.port),
        amqp_ca_file=other.ca,
        amqp_cert_file=other.client_cert,
        amqp_key_file=other.client_key,
    )
    try:
        await mesh.start(ready=False)
        await eventually(
            lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text,
            timeout=20,
            what="the TLS handshake refused and logged",
        )
        status, _, body = await post(mesh.url + "/readyz", method="GET")
        assert status == 503 and b"not connected to RabbitMQ" in body
    finally:
        await mesh.stop()
        await proxy.stop()


# --- per-broker ingress tokens ----------------------------------------------------------------

TOKEN_SECRET = textwrap.dedent("""
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: ingress}
        stringData:
          producers: |
            old-token-1234
            new-token-5678
        """)


async def test_ingress_token_from_a_secret(start_mesh, make_sink):
    sink = await make_sink()
    annotation = '"rabbitmesh.dev/ingress-token-secret": ingress/producers'
    mesh = await start_mesh(broker_and_trigger(sink.url, annotation) + TOKEN_SECRET)
    url = mesh.url + "/default/br"

    async def send(id_: str, authorization: str | None) -> tuple[int, dict[str, str]]:
        headers = binary_headers(id_=id_)
        if authorization is not None:
            headers["Authorization"] = authorization
        status, h, _ = await post(url, headers=headers, body=b"{}")
        return status, h

    status, headers = await send("none", None)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="rabbitmesh"'
    for wrong in ("Bearer nope", "Bearer old-token-123", "Basic b2xkLXRva2VuLTEyMzQ=", "Bearer "):
        status, headers = await send("wrong", wrong)
        assert status == 401, wrong
        assert headers["WWW-Authenticate"].startswith("Bearer realm="), wrong
    assert (await send("a", "Bearer old-token-1234"))[0] == 202
    assert (await send("b", "bearer  new-token-5678 "))[0] == 202  # either line: rotation
    await sink.wait_for(2)
    assert sorted(sink.ids()) == ["a", "b"]  # nothing refused got through


async def test_a_broker_whose_token_secret_is_missing_accepts_nothing(start_mesh, make_sink):
    sink = await make_sink()
    annotation = '"rabbitmesh.dev/ingress-token-secret": later'
    mesh = await start_mesh(broker_and_trigger(sink.url, annotation))
    brokers = mesh.url + BROKERS.format(ns=NS)
    status, shown = await call("GET", f"{brokers}/br")
    assert ready(shown) == ("False", "IngressTokenSecretMissing"), shown
    assert "later" in shown["status"]["conditions"][0]["message"]
    status, _, _ = await post(mesh.url + "/default/br", headers=binary_headers(), body=b"{}")
    assert status == 503  # a broker that is not Ready takes nothing (and says why)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}}
    secret["stringData"] = {"token": "t0k3n-later"}
    assert (await call("POST", mesh.url + SECRETS.format(ns=NS), secret))[0] == 201

    async def broker_ready() -> bool:
        return ready((await call("GET", f"{brokers}/br"))[1])[0] == "True"

    await eventually(broker_ready, timeout=10, what="the broker Ready once its Secret exists")
    headers = {**binary_headers(), "Authorization": "Bearer t0k3n-later"}
    assert (await post(mesh.url + "/default/br", headers=headers, body=b"{}"))[0] == 202
    # A malformed annotation is refused up front, with the field named.
    bad = broker("bad")
    bad["metadata"]["annotations"] = {"rabbitmesh.dev/ingress-token-secret": "Not_A_Name"}
    status, body = await call("POST", brokers, bad)
    assert status == 422 and "ingress-token-secret" in str(body), body


# --- admin API from another host --------------------------------------------------------------


def non_loopback_address() -> str:
    """An address of this host that is not loopback (the source of a connection to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
        except OSError:
            pytest.skip("this host has no non-loopback IPv4 address to test from")
        address = s.getsockname()[0]
    if address.startswith("127.") or address == "0.0.0.0":
        pytest.skip("this host has no non-loopback IPv4 address to test from")
    return address


@pytest.mark.parametrize("token", [None, "adm1n-t0ken"])
async def test_admin_api_from_a_non_loopback_address(tmp_path, prefix, token):
    """Connecting to this host's own non-loopback address makes that the source address, so
    the server sees a request from "another host" without a second machine."""
    address = non_loopback_address()
    write_manifests(tmp_path / "c", "")
    mesh = InProcessMesh(tmp_path / "c", prefix, http_host="0.0.0.0", admin_token=token)
    await mesh.start()
    try:
        remote = f"http://{address}:{mesh.port}" + BROKERS.format(ns=NS)
        local_alias = f"http://127.0.0.2:{mesh.port}" + BROKERS.format(ns=NS)
        assert (await call("GET", remote))[0] == 200  # reading is open
        if token is None:
            status, body = await call("POST", remote, broker("b1"))
            assert status == 403 and "RABBITMESH_ADMIN_TOKEN" in body["error"], body
            assert (await call("DELETE", remote + "/b1"))[0] == 403
            assert (await call("POST", local_alias, broker("b1")))[0] == 201  # still loopback
        else:
            assert (await call("POST", remote, broker("b1")))[0] == 401
            assert (await call("POST", local_alias, broker("b1")))[0] == 401  # token needed
            assert (await call("POST", remote, broker("b1"), token="wrong"))[0] == 401
            assert (await call("POST", remote, broker("b1"), token=token))[0] == 201
    finally:
        await mesh.stop()


# --- destinations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "//no-scheme"]
)
async def test_subscriber_and_dead_letter_uris_must_be_http(start_mesh, uri):
    mesh = await start_mesh("")
    triggers = mesh.url + TRIGGERS.format(ns=NS)
    status, body = await call("POST", triggers, trigger("t", "br", uri))
    assert status == 422 and "spec.subscriber" in str(body), body
    dead = trigger("t", "br", "http://ok/", delivery={"deadLetterSink": {"uri": uri}})
    status, body = await call("POST", triggers, dead)
    assert status == 422 and "deadLetterSink" in str(body), body


# --- nothing secret in the logs ---------------------------------------------------------------


async def test_secrets_and_authorization_headers_never_reach_the_logs(tmp_path, prefix, make_sink):
    """A real `rabbitmesh run` at debug level, fed every kind of secret; its whole output is
    searched for them afterwards (plain and base64)."""
    admin, ingress, other, wrong = "adm-9f3e1c", "ing-7a2b4d", "sec-5e8c0f", "wrong-1d6a3b"
    failing, ok = await make_sink(lambda _r, _i: Reply(500, body=b"nope")), await make_sink()
    manifest = broker_and_trigger(
        failing.url, '"rabbitmesh.dev/ingress-token-secret": ingress'
    ) + textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Secret
        metadata: {{name: ingress}}
        stringData: {{token: {ingress}}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: ok}}
        spec: {{broker: br, subscriber: {{uri: "{ok.url}"}}}}
        """)
    write_manifests(tmp_path / "c", manifest)
    mesh = await MeshProcess(
        tmp_path / "c", prefix, RABBITMESH_LOG_LEVEL="debug", RABBITMESH_ADMIN_TOKEN=admin
    ).start()
    try:
        url = mesh.url + "/default/br"
        for token in (ingress, wrong):
            headers = {**binary_headers(), "Authorization": f"Bearer {token}"}
            await post(url, headers=headers, body=b"{}")
        secrets = mesh.url + SECRETS.format(ns=NS)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"}}
        secret["stringData"] = {"password": other}
        for token in (wrong, admin):
            await call("POST", secrets, secret, token=token)
        await call("PUT", secrets + "/s2", {**secret, "data": {"k": other}}, token=admin)
        await call("GET", secrets + "/s2")
        await eventually(
            lambda: "delivery failed" in mesh.output() and "delivered:" in mesh.output(),
            timeout=10,
            what="a failed and a successful delivery logged",
        )
    finally:
        mesh.signal(signal.SIGTERM)
        await mesh.wait()
    log = mesh.output()
    assert " DEBUG " in log  # the log is there, at its most verbose
    for value in (admin, ingress, other, wrong):
        for shown in (value, base64.b64encode(value.encode()).decode().rstrip("=")):
            assert shown not in log, f"{value!r} appears in the log"
