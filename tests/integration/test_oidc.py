"""Sender identity and EventPolicy (Knative's authentication-oidc) against real HTTP: a test
OIDC issuer serving discovery and JWKS, tokens allowed, refused, forged and expired; the
default authorization modes; rabbitmesh's own senders proving who they are."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.oidc import TestIssuer
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

AUD = "eventing.knative.dev/broker/default/orders"
PRODUCER = "system:serviceaccount:default:producer-a"


@pytest.fixture
async def issuer():
    i = await TestIssuer().start()
    yield i
    await i.stop()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


def hmac_with_public_key(issuer: TestIssuer, claims: dict) -> str:
    """The algorithm-confusion attack: HS256 keyed with the issuer's public key."""
    pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def event(id_: str, type_: str = "com.example.order.created") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": id_,
        "ce-type": type_,
        "ce-source": "/producer",
        "content-type": "application/json",
    }


async def post(url: str, headers: dict[str, str], token: str | None = None):
    if token is not None:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.post(url, headers=headers, data=b"{}") as r:
        return r.status, await r.text(), r.headers.get("WWW-Authenticate")


POLICY = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: orders}
    ---
    apiVersion: eventing.knative.dev/v1alpha1
    kind: EventPolicy
    metadata: {name: producers}
    spec:
      to:
        - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}
      from:
        - sub: "system:serviceaccount:default:producer-*"
      filters:
        - prefix: {type: com.example.order.}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: all}
    spec:
      broker: orders
      subscriber: {uri: "SINK"}
    """


async def test_tokens_allowed_refused_forged_and_expired(start_mesh, make_sink, issuer):
    sink = await make_sink()
    mesh = await start_mesh(
        POLICY.replace("SINK", sink.url),
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    ctx = mesh.server.ctx
    broker = ctx.get("Broker", "default", "orders")
    assert broker.status.address.audience == AUD
    policy = ctx.get("EventPolicy", "default", "producers")
    assert policy.status.ready == "True"
    assert policy.status.model_extra["from"] == ["system:serviceaccount:default:producer-*"]
    assert policy.status.model_extra["targets"] == [
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "orders"}
    ]
    url = f"{mesh.url}/default/orders"

    status, _, challenge = await post(url, event("no-token"))
    assert status == 401 and challenge == 'Bearer realm="rabbitmesh"'

    status, _, _ = await post(url, event("ok-1"), issuer.token(PRODUCER, AUD))
    assert status == 202
    await sink.wait_for(1)
    assert sink.received[0].ce_id == "ok-1"

    now = int(time.time())
    claims = {"iss": issuer.url, "sub": PRODUCER, "aud": AUD, "iat": now, "exp": now + 600}
    attacker = ec.generate_private_key(ec.SECP256R1())
    refused = {
        "wrong audience": issuer.token(PRODUCER, "eventing.knative.dev/broker/default/other"),
        "expired": issuer.token(PRODUCER, AUD, ttl=-120),
        "alg none": unsigned(claims),
        "hs256 with the public key": hmac_with_public_key(issuer, claims),
        "forged (another key, same kid)": issuer.token(PRODUCER, AUD, key=attacker),
        "unknown issuer": issuer.token(PRODUCER, AUD, iss="https://evil.example", key=attacker),
        "unknown kid": issuer.token(PRODUCER, AUD, kid="nope"),
        "no exp": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"},
            issuer.key,
            algorithm="ES256",
            headers={"kid": issuer.kid},
        ),
        "not a JWT": "abc.def",
    }
    for what, token in refused.items():
        status, text, challenge = await post(url, event(f"bad-{what}"), token)
        assert status == 401, (what, status, text)
        assert challenge == 'Bearer realm="rabbitmesh", error="invalid_token"', what
    for what, reason in (
        ("wrong audience", "not for this target"),
        ("expired", "expired"),
        ("alg none", "'none' is not accepted"),
        ("hs256 with the public key", "'HS256' is not accepted"),
        ("unknown issuer", "not trusted"),
    ):
        _, text, _ = await post(url, event("why"), refused[what])
        assert reason in text, (what, text)

    # A valid token of a sender no policy allows, and an event the filter does not take: 403.
    stranger = issuer.token("system:serviceaccount:default:stranger", AUD)
    status, text, _ = await post(url, event("who"), stranger)
    assert status == 403 and "stranger" in text
    status, text, _ = await post(
        url, event("what", "com.example.invoice"), issuer.token(PRODUCER, AUD)
    )
    assert status == 403 and "filters" in text

    # None of the refused events reached the subscriber.
    status, _, _ = await post(url, event("ok-2"), issuer.token(PRODUCER, AUD))
    assert status == 202
    await sink.wait_for(2)
    assert [r.ce_id for r in sink.received] == ["ok-1", "ok-2"]
    # Unknown kids did not make rabbitmesh fetch the JWKS over and over.
    assert issuer.jwks_fetches <= 3


@pytest.mark.parametrize(
    "mode, same_ns, other_ns, none",
    [
        ("allow-same-namespace", 202, 403, 401),
        ("allow-all", 202, 202, 202),
        ("deny-all", 403, 403, 403),
    ],
)
async def test_default_authorization_modes_without_a_policy(
    start_mesh, issuer, mode, same_ns, other_ns, none
):
    mesh = await start_mesh(
        """
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: orders}
        """,
        authentication_oidc=True,
        oidc_issuer=issuer.url,
        default_authorization_mode=mode,
    )
    url = f"{mesh.url}/default/orders"
    assert (await post(url, event("a"), issuer.token(PRODUCER, AUD)))[0] == same_ns
    other = issuer.token("system:serviceaccount:team-b:producer", AUD)
    assert (await post(url, event("b"), other))[0] == other_ns
    assert (await post(url, event("c")))[0] == none


async def test_rabbitmeshs_own_senders_carry_their_identity(start_mesh, make_sink, issuer):
    """A PingSource allowed by a policy `from` ref reaches the broker; its Trigger's
    deliveries carry a token a subscriber verifies with rabbitmesh's published JWKS."""
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: orders}}
        ---
        apiVersion: eventing.knative.dev/v1alpha1
        kind: EventPolicy
        metadata: {{name: only-the-ticker}}
        spec:
          to: [{{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}]
          from: [{{ref: {{apiVersion: sources.knative.dev/v1, kind: PingSource, name: ticker}}}}]
        ---
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {{name: ticker}}
        spec:
          schedule: "*/1 * * * * *"
          sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}
        ---
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {{name: intruder}}
        spec:
          schedule: "*/1 * * * * *"
          sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: all}}
        spec:
          broker: orders
          subscriber: {{uri: "{sink.url}", audience: "my-subscriber"}}
        """,
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    got = await sink.wait_for(2)
    assert {r.headers["ce-source"] for r in got} == {
        "/apis/v1/namespaces/default/pingsources/ticker"
    }
    policy = mesh.server.ctx.get("EventPolicy", "default", "only-the-ticker")
    assert policy.status.model_extra["from"] == [
        "system:serviceaccount:default:ticker-oidc-sources.knative.dev-pingsource"
    ]
    # The subscriber checks the token as any OIDC relying party: discovery, JWKS, signature.
    base = mesh.server.settings.base_url
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{mesh.url}/.well-known/openid-configuration") as r:
            discovery = await r.json()
        assert discovery["issuer"] == base
        async with s.get(f"{mesh.url}/.well-known/jwks.json") as r:
            keys = jwt.PyJWKSet.from_dict(await r.json())
    token = got[0].headers["Authorization"].removeprefix("Bearer ")
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="my-subscriber", issuer=base)
    assert claims["sub"] == "system:serviceaccount:default:all-oidc-eventing.knative.dev-trigger"
    await eventually(lambda: len(sink.received) >= 4, timeout=10)
    assert all(
        r.headers["ce-source"].endswith("/ticker") for r in sink.received
    )  # the intruder is refused every second


ENDPOINTS = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: default}
    ---
    apiVersion: eventing.knative.dev/v1alpha1
    kind: EventTransform
    metadata: {name: t}
    spec:
      jsonata:
        expression: '{"specversion": "1.0", "id": id, "source": source, "type": "done." & type}'
    ---
    apiVersion: eventing.knative.dev/v1alpha1
    kind: RequestReply
    metadata: {name: rr}
    spec:
      brokerRef: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
      timeout: PT10S
    ---
    apiVersion: eventing.knative.dev/v1alpha1
    kind: EventPolicy
    metadata: {name: endpoints}
    spec:
      to:
        - ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: t}
        - ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: RequestReply, name: rr}
      from:
        - sub: "system:serviceaccount:default:producer-*"
        - ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: to-transform}
      filters:
        - prefix: {type: com.example.order.}
    ---
    apiVersion: eventing.knative.dev/v1alpha1
    kind: EventPolicy
    metadata: {name: broker-only}
    spec:
      to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}]
      from: [{sub: "system:serviceaccount:default:intruder"}, {sub: "PRODUCER"}]
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: to-transform}
    spec:
      broker: default
      filter: {attributes: {type: com.example.order.created}}
      subscriber: {ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: t}}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: responder}
    spec:
      broker: default
      filter: {attributes: {type: com.example.order.asked}}
      subscriber: {uri: "RESPONDER"}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: out}
    spec:
      broker: default
      filter: {attributes: {type: done.com.example.order.created}}
      subscriber: {uri: "SINK"}
    """


async def test_eventtransform_and_requestreply_are_behind_the_gate(start_mesh, make_sink, issuer):
    """EventPolicies name an EventTransform and a RequestReply in `spec.to`: without a token
    401, with a token for another target 401, with the token of a sender only another policy
    allows 403, an event the filters do not take 403; the allowed sender and the Trigger the
    policy names (rabbitmesh's own identity) get through."""
    sink = await make_sink()

    def answer(r, _i):
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "answer-" + r.ce_id,
            "ce-type": "com.example.order.answered",
            "ce-source": "responder",
            "ce-replyid": r.headers["ce-correlationid"],
        }
        return Reply(200, headers, b"")

    responder = await make_sink(answer)
    mesh = await start_mesh(
        ENDPOINTS.replace("SINK", sink.url)
        .replace("RESPONDER", responder.url)
        .replace("PRODUCER", PRODUCER),
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    ctx = mesh.server.ctx
    t_aud = "eventing.knative.dev/eventtransform/default/t"
    rr_aud = "eventing.knative.dev/requestreply/default/rr"
    assert ctx.get("EventTransform", "default", "t").status.address.audience == t_aud
    assert ctx.get("RequestReply", "default", "rr").status.address.audience == rr_aud
    policy = ctx.get("EventPolicy", "default", "endpoints")
    assert {t["kind"] for t in policy.status.model_extra["targets"]} == {
        "EventTransform",
        "RequestReply",
    }
    intruder = "system:serviceaccount:default:intruder"
    for path, aud, ok in (
        ("/eventtransforms/default/t", t_aud, 200),
        ("/requestreplies/default/rr", rr_aud, 200),
    ):
        url = mesh.url + path
        kind = "com.example.order.asked"
        status, _, challenge = await post(url, event("no-token", kind))
        assert status == 401 and challenge == 'Bearer realm="rabbitmesh"', path
        # a valid token, but for the broker: not for this target
        status, text, _ = await post(url, event("other-aud", kind), issuer.token(PRODUCER, AUD))
        assert status == 401 and "not for this target" in text, (path, text)
        # the broker's policy allows the intruder; this target's does not
        status, text, _ = await post(url, event("intruder", kind), issuer.token(intruder, aud))
        assert status == 403 and "intruder" in text, (path, text)
        status, text, _ = await post(
            url, event("filtered", "com.example.invoice"), issuer.token(PRODUCER, aud)
        )
        assert status == 403 and "filters" in text, (path, text)
        status, text, _ = await post(url, event("ok", kind), issuer.token(PRODUCER, aud))
        assert status == ok, (path, status, text)
    assert [r.ce_id for r in responder.received] == ["ok"]  # nothing refused reached it
    # A Trigger's delivery to the EventTransform carries the Trigger's identity: allowed.
    broker_url = f"{mesh.url}/default/default"
    broker_aud = "eventing.knative.dev/broker/default/default"
    status, _, _ = await post(broker_url, event("via-trigger"), issuer.token(PRODUCER, broker_aud))
    assert status == 202
    (got,) = await sink.wait_for(1)
    assert got.ce_id == "via-trigger" and got.headers["ce-type"] == "done.com.example.order.created"


async def test_dead_letter_deliveries_carry_the_senders_identity(start_mesh, make_sink, issuer):
    """A Trigger's dead letters reach its dead-letter sink with a token of the Trigger's own
    identity, for the sink's audience, verifiable with rabbitmesh's published JWKS."""
    failing = await make_sink(lambda _r, _i: Reply(500))
    dls = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: orders}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: fails}}
        spec:
          broker: orders
          subscriber: {{uri: "{failing.url}"}}
          delivery:
            retry: 0
            deadLetterSink: {{uri: "{dls.url}", audience: "my-dead-letters"}}
        """,
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    status, _, _ = await post(
        f"{mesh.url}/default/orders", event("doomed"), issuer.token(PRODUCER, AUD)
    )
    assert status == 202
    (dead,) = await dls.wait_for(1)
    assert dead.ce_id == "doomed" and dead.headers["ce-knativeerrorcode"] == "500"
    base = mesh.server.settings.base_url
    async with aiohttp.ClientSession() as s, s.get(f"{mesh.url}/.well-known/jwks.json") as r:
        keys = jwt.PyJWKSet.from_dict(await r.json())
    token = dead.headers["Authorization"].removeprefix("Bearer ")
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims = jwt.decode(
        token, key.key, algorithms=["ES256"], audience="my-dead-letters", issuer=base
    )
    assert claims["sub"] == "system:serviceaccount:default:fails-oidc-eventing.knative.dev-trigger"


async def test_gitlab_source_events_carry_the_sources_identity(start_mesh, make_sink, issuer):
    """A GitLabSource's webhook events reach a Broker whose only policy allows that source
    (`from: ref GitLabSource`): rabbitmesh signs them with the source's identity."""
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: orders}}
        ---
        apiVersion: eventing.knative.dev/v1alpha1
        kind: EventPolicy
        metadata: {{name: only-the-repo}}
        spec:
          to: [{{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}]
          from:
            - ref: {{apiVersion: sources.knative.dev/v1alpha1, kind: GitLabSource, name: repo}}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {{name: gitlab}}
        stringData: {{secretToken: hook-secret}}
        ---
        apiVersion: sources.knative.dev/v1alpha1
        kind: GitLabSource
        metadata: {{name: repo}}
        spec:
          projectUrl: https://gitlab.example.com/group/app
          eventTypes: [push_events]
          secretToken: {{secretKeyRef: {{name: gitlab, key: secretToken}}}}
          sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: all}}
        spec:
          broker: orders
          subscriber: {{uri: "{sink.url}"}}
        """,
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": "hook-secret",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{mesh.url}/sources/gitlab/default/repo", data=b"{}", headers=headers) as r,
    ):
        assert r.status == 202, await r.text()
    (got,) = await sink.wait_for(1)
    assert got.headers["ce-type"] == "dev.knative.sources.gitlab.push"


async def test_eventtransform_posts_to_its_sink_with_its_identity(start_mesh, make_sink, issuer):
    """An EventTransform forwarding to a Broker whose only policy allows that EventTransform
    (`from: ref EventTransform`): its POST carries the EventTransform's own identity."""
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: orders}}
        ---
        apiVersion: eventing.knative.dev/v1alpha1
        kind: EventPolicy
        metadata: {{name: only-the-transform}}
        spec:
          to: [{{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}]
          from:
            - ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: t}}
        ---
        apiVersion: eventing.knative.dev/v1alpha1
        kind: EventTransform
        metadata: {{name: t}}
        spec:
          sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}
          jsonata:
            expression: '{{"specversion": "1.0", "id": id, "source": source, "type": "done"}}'
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: all}}
        spec:
          broker: orders
          subscriber: {{uri: "{sink.url}"}}
        """,
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    t_aud = "eventing.knative.dev/eventtransform/default/t"
    status, text, _ = await post(
        f"{mesh.url}/eventtransforms/default/t", event("e1"), issuer.token(PRODUCER, t_aud)
    )
    assert status == 202, text  # the broker's answer, passed back
    (got,) = await sink.wait_for(1)
    assert got.ce_id == "e1" and got.headers["ce-type"] == "done"


async def test_a_replay_into_a_protected_broker_sends_as_itself(start_mesh, make_sink, issuer):
    """A Replay whose destination is a Broker that takes only signed senders: the replayed
    events carry the Replay's own token (without it they were refused with 401, retried and
    dead-lettered or dropped)."""
    from datetime import UTC, datetime, timedelta

    from tests.support.api import call

    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata:
          name: src
          annotations: {{"rabbitmesh.dev/archive-retention": "P1D"}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: orders}}
        ---
        apiVersion: eventing.knative.dev/v1alpha1
        kind: EventPolicy
        metadata: {{name: signed-only}}
        spec:
          to: [{{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}}}]
          from: [{{sub: "system:*"}}]
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: all}}
        spec:
          broker: orders
          subscriber: {{uri: "{sink.url}"}}
        """,
        authentication_oidc=True,
        oidc_issuer=issuer.url,
    )
    src = f"{mesh.url}/default/src"
    status, _, _ = await post(src, event("old-1"), issuer.token(PRODUCER, AUD[:-6] + "src"))
    assert status == 202
    # Tokenless into the protected broker: refused (what the Replay's posts met before).
    status, _, _ = await post(f"{mesh.url}/default/orders", event("direct"))
    assert status == 401
    start = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    status, body = await call(
        "POST",
        f"{mesh.url}/apis/rabbitmesh.dev/v1alpha1/namespaces/default/replays",
        {
            "apiVersion": "rabbitmesh.dev/v1alpha1",
            "kind": "Replay",
            "metadata": {"name": "again", "namespace": "default"},
            "spec": {
                "broker": "src",
                "from": start,
                "destination": {
                    "ref": {
                        "apiVersion": "eventing.knative.dev/v1",
                        "kind": "Broker",
                        "name": "orders",
                    }
                },
            },
        },
    )
    assert status == 201, body
    (got,) = await sink.wait_for(1, timeout=30)
    assert got.ce_id == "old-1"
