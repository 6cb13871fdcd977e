"""Attacks through the RabbitMQ bridges: a manifest naming rabbitmesh's own queues and
exchanges (the resource store with every Secret, another namespace's broker), a connection
Secret that is not an AMQP URL, and senders without identity at a RabbitmqSink."""

from __future__ import annotations

import aio_pika
import aiohttp
import pytest

from tests.support.mesh import AMQP_URL
from tests.support.oidc import TestIssuer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def ready(mesh, kind: str, name: str):
    res = mesh.server.ctx.get(kind, "default", name)
    return next(c for c in res.status.conditions if c.type == "Ready")


async def test_bridges_cannot_use_rabbitmeshs_own_queues_and_exchanges(
    start_mesh, make_sink, prefix
):
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: db}}
        stringData: {{password: hunter2-very-secret}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: private, namespace: team-b}}
        ---
        apiVersion: sources.knative.dev/v1alpha1
        kind: RabbitmqSource
        metadata: {{name: store-reader}}
        spec:
          rabbitmqResourcesConfig: {{queueName: {prefix}.store, predeclared: true}}
          sink: {{uri: "{sink.url}"}}
        ---
        apiVersion: sources.knative.dev/v1alpha1
        kind: RabbitmqSource
        metadata: {{name: eavesdropper}}
        spec:
          rabbitmqResourcesConfig:
            queueName: mine
            exchangeName: {prefix}.broker.team-b.private
          sink: {{uri: "{sink.url}"}}
        ---
        apiVersion: sinks.rabbitmesh.dev/v1alpha1
        kind: RabbitmqSink
        metadata: {{name: injector}}
        spec:
          exchangeName: {prefix}.broker.team-b.private
        """
    )
    for kind, name in (
        ("RabbitmqSource", "store-reader"),
        ("RabbitmqSource", "eavesdropper"),
        ("RabbitmqSink", "injector"),
    ):
        cond = ready(mesh, kind, name)
        assert (cond.status, cond.reason) == ("False", "ReservedName"), (name, cond)
        assert "RABBITMESH_TOPOLOGY_PREFIX" in cond.message
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        # Nothing was declared for the eavesdropper.
        ch2 = await conn.channel()
        with pytest.raises(aio_pika.exceptions.ChannelClosed):
            await ch2.declare_queue("mine", passive=True)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{mesh.url}/rabbitmqsinks/default/injector",
            headers={"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "/"},
        ) as r:
            assert r.status == 503
    assert sink.received == []


async def test_a_connection_secret_naming_rabbitmeshs_own_rabbitmq_does_not_lift_the_rule(
    start_mesh, make_sink, prefix
):
    """The reserved-name check applied only to bridges without a connection Secret: a Secret
    holding rabbitmesh's own URL (guest's well-known password on localhost) read another
    namespace's broker and could read the resource store."""
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: own}}
        stringData: {{uri: "{AMQP_URL.replace("127.0.0.1", "localhost")}"}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: private, namespace: team-b}}
        ---
        apiVersion: sources.knative.dev/v1alpha1
        kind: RabbitmqSource
        metadata: {{name: store-reader}}
        spec:
          rabbitmqClusterReference: {{connectionSecret: {{name: own}}}}
          rabbitmqResourcesConfig: {{queueName: {prefix}.store, predeclared: true}}
          sink: {{uri: "{sink.url}"}}
        ---
        apiVersion: sources.knative.dev/v1alpha1
        kind: RabbitmqSource
        metadata: {{name: eavesdropper}}
        spec:
          rabbitmqClusterReference: {{connectionSecret: {{name: own}}}}
          rabbitmqResourcesConfig:
            queueName: {prefix}-spy
            exchangeName: {prefix}.broker.team-b.private
          sink: {{uri: "{sink.url}"}}
        ---
        apiVersion: sinks.rabbitmesh.dev/v1alpha1
        kind: RabbitmqSink
        metadata: {{name: injector}}
        spec:
          exchangeName: {prefix}.broker.team-b.private
          connectionSecret: {{name: own}}
        """
    )
    for kind, name in (
        ("RabbitmqSource", "store-reader"),
        ("RabbitmqSource", "eavesdropper"),
        ("RabbitmqSink", "injector"),
    ):
        cond = ready(mesh, kind, name)
        assert (cond.status, cond.reason) == ("False", "ReservedName"), (name, cond)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{mesh.url}/team-b/private",
            json={"secret": 1},
            headers={"ce-specversion": "1.0", "ce-id": "p1", "ce-type": "t", "ce-source": "/"},
        ) as r:
            assert r.status == 202
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        with pytest.raises(aio_pika.exceptions.ChannelClosed):  # never declared, never bound
            await ch.declare_queue(f"{prefix}-spy", passive=True)
    assert sink.received == []


async def test_a_connection_secret_that_is_not_an_amqp_url_is_refused_without_showing_it(
    start_mesh,
):
    mesh = await start_mesh(
        """
        apiVersion: v1
        kind: Secret
        metadata: {name: other}
        stringData: {uri: "http://user:s3cr3t-value@example.com/"}
        ---
        apiVersion: sinks.rabbitmesh.dev/v1alpha1
        kind: RabbitmqSink
        metadata: {name: elsewhere}
        spec:
          exchangeName: orders
          connectionSecret: {name: other}
        ---
        apiVersion: sinks.rabbitmesh.dev/v1alpha1
        kind: RabbitmqSink
        metadata: {name: nowhere}
        spec:
          exchangeName: orders
          connectionSecret: {name: missing}
        """
    )
    cond = ready(mesh, "RabbitmqSink", "elsewhere")
    assert cond.reason == "InvalidConnectionSecret"
    assert "s3cr3t" not in cond.message and "example.com" not in cond.message
    assert ready(mesh, "RabbitmqSink", "nowhere").reason == "SecretNotFound"


async def test_a_rabbitmq_sink_needs_an_identity_and_a_trigger_has_one(start_mesh, prefix):
    issuer = await TestIssuer().start()
    try:
        exchange, queue = f"app-{prefix}", f"app-{prefix}-q"
        conn = await aio_pika.connect(AMQP_URL)
        async with conn:
            ch = await conn.channel()
            x = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, auto_delete=False)
            q = await ch.declare_queue(queue, auto_delete=True)
            await q.bind(x, "#")
            mesh = await start_mesh(
                f"""
                apiVersion: eventing.knative.dev/v1
                kind: Broker
                metadata: {{name: orders}}
                ---
                apiVersion: eventing.knative.dev/v1
                kind: Trigger
                metadata: {{name: out}}
                spec:
                  broker: orders
                  subscriber:
                    ref:
                      apiVersion: sinks.rabbitmesh.dev/v1alpha1
                      kind: RabbitmqSink
                      name: out
                ---
                apiVersion: sinks.rabbitmesh.dev/v1alpha1
                kind: RabbitmqSink
                metadata: {{name: out}}
                spec: {{exchangeName: {exchange}}}
                """,
                authentication_oidc=True,
                oidc_issuer=issuer.url,
            )
            sink = mesh.server.ctx.get("RabbitmqSink", "default", "out")
            aud = "sinks.rabbitmesh.dev/rabbitmqsink/default/out"
            assert sink.status.address.audience == aud
            headers = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/"}
            async with aiohttp.ClientSession() as s:
                async with s.post(
                    f"{mesh.url}/rabbitmqsinks/default/out", headers={**headers, "ce-id": "a"}
                ) as r:
                    assert r.status == 401  # anonymous
                other_ns = issuer.token("system:serviceaccount:team-b:x", aud)
                async with s.post(
                    f"{mesh.url}/rabbitmqsinks/default/out",
                    headers={**headers, "ce-id": "b", "Authorization": f"Bearer {other_ns}"},
                ) as r:
                    assert r.status == 403  # allow-same-namespace
                producer = issuer.token(
                    "system:serviceaccount:default:p",
                    "eventing.knative.dev/broker/default/orders",
                )
                async with s.post(
                    f"{mesh.url}/default/orders",
                    headers={**headers, "ce-id": "c", "Authorization": f"Bearer {producer}"},
                ) as r:
                    assert r.status == 202
            # The trigger delivers to the sink with its own identity (same namespace): taken.
            got = []

            async def arrived() -> bool:
                m = await q.get(no_ack=True, fail=False)
                if m is not None:
                    got.append(m.headers["ce-id"])
                return bool(got)

            await eventually(arrived, timeout=15, what="the event through the sink")
            assert got == ["c"]
            await ch.exchange_delete(exchange)
    finally:
        await issuer.stop()
