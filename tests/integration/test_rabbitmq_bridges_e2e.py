"""The whole bridge, as a user runs it: a plain AMQP publisher -> RabbitmqSource -> Broker ->
Trigger -> RabbitmqSink -> a plain AMQP consumer, on "another RabbitMQ" (a second node when
RABBITMESH_TEST_OTHER_AMQP_URL names one, else a virtual host of its own on the test node,
reached through a connectionSecret like any other cluster), with no message lost across a
SIGKILL of rabbitmesh."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest

from tests.support.mesh import AMQP_URL, MeshProcess, write_manifests
from tests.support.rabbit import rabbitmqctl
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

N = 300


@pytest.fixture
def other_rabbitmq():
    """An AMQP URL that is not rabbitmesh's own."""
    given = os.environ.get("RABBITMESH_TEST_OTHER_AMQP_URL")
    if given:
        yield given
        return
    vhost = f"rmtest-other-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(AMQP_URL)
    yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    try:
        rabbitmqctl("delete_vhost", vhost)
    except subprocess.CalledProcessError:
        pass


def manifests(other: str, queue: str, exchange: str, out: str) -> str:
    return f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: other-rabbit}}
        stringData: {{uri: "{other}"}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: default}}
        ---
        apiVersion: sources.knative.dev/v1alpha1
        kind: RabbitmqSource
        metadata: {{name: legacy-orders}}
        spec:
          rabbitmqClusterReference:
            connectionSecret: {{name: other-rabbit}}
          rabbitmqResourcesConfig:
            exchangeName: {exchange}
            queueName: {queue}
            parallelism: 20
          delivery: {{retry: 30, backoffPolicy: linear, backoffDelay: PT0.2S}}
          sink:
            ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: to-rabbit}}
        spec:
          broker: default
          filter: {{attributes: {{type: dev.knative.rabbitmq.event}}}}
          delivery: {{retry: 30, backoffPolicy: linear, backoffDelay: PT0.2S}}
          subscriber:
            ref: {{apiVersion: sinks.rabbitmesh.dev/v1alpha1, kind: RabbitmqSink, name: out}}
        ---
        apiVersion: sinks.rabbitmesh.dev/v1alpha1
        kind: RabbitmqSink
        metadata: {{name: out}}
        spec:
          connectionSecret: {{name: other-rabbit}}
          exchangeName: {out}
          routingKey: "copied.{{rabbitmqroutingkey}}"
        """


async def test_amqp_to_amqp_through_a_broker_loses_nothing_across_sigkill(
    tmp_path, prefix, other_rabbitmq
):
    # The application's names, not under rabbitmesh's prefix (refused on any RabbitMQ);
    # still starting with it, for the clean-up.
    queue, exchange = f"{prefix}-app.legacy-in", f"{prefix}-app.legacy"
    out, out_queue = f"{prefix}-app.out", f"{prefix}-app.out-q"
    conn = await aio_pika.connect(other_rabbitmq)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        x_in = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        x_out = await ch.declare_exchange(out, aio_pika.ExchangeType.TOPIC, durable=True)
        q_out = await ch.declare_queue(out_queue, durable=True)
        await q_out.bind(x_out, "copied.#")

        write_manifests(tmp_path / "c", manifests(other_rabbitmq, queue, exchange, out))
        mesh = await MeshProcess(tmp_path / "c", prefix).start()
        try:
            await eventually(
                lambda: _consumers(other_rabbitmq, queue) == 1,
                timeout=30,
                what="the source consuming its queue",
            )
            for i in range(N):
                await x_in.publish(
                    aio_pika.Message(
                        f'{{"n": {i}}}'.encode(),
                        content_type="application/json",
                        message_id=f"m-{i}",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=f"orders.{i % 3}",
                )
            seen: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}

            async def drained(at_least: int) -> bool:
                while (m := await q_out.get(no_ack=True, fail=False)) is not None:
                    seen[m.headers["ce-id"]] = m  # type: ignore[index]
                return len(seen) >= at_least

            await eventually(lambda: drained(20), timeout=60, what="the first events through")
            mesh.signal(signal.SIGKILL)  # mid-stream: some in every stage
            assert await mesh.wait() == -signal.SIGKILL
            mesh = await MeshProcess(tmp_path / "c", prefix).start()
            await eventually(lambda: drained(N), timeout=120, what=f"all {N} events through")
        finally:
            await mesh.stop()
        assert set(seen) == {f"m-{i}" for i in range(N)}
        sample = seen["m-4"]
        assert sample.routing_key == "copied.orders.1"
        assert sample.headers["ce-type"] == "dev.knative.rabbitmq.event"  # type: ignore[index]
        assert sample.body == b'{"n": 4}'
        await ch.exchange_delete(exchange)
        await ch.exchange_delete(out)
        await ch.queue_delete(out_queue)
        await ch.queue_delete(queue)


def _consumers(url: str, queue: str) -> int:
    vhost = urlsplit(url).path.lstrip("/") or "/"
    if os.environ.get("RABBITMESH_TEST_OTHER_AMQP_URL"):
        node = os.environ.get("RABBITMESH_TEST_OTHER_RABBITMQ_NODE")
        args = ["-n", node] if node else []
        out = subprocess.run(
            [
                "rabbitmqctl",
                *args,
                "list_queues",
                "-p",
                vhost,
                "-q",
                "--no-table-headers",
                "name",
                "consumers",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    else:
        out = rabbitmqctl(
            "list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "consumers"
        )
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return int(parts[1])
    return 0


EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "bridges" / "rabbitmq.yaml"


async def test_the_bridges_example_runs_as_docs_bridges_md_shows(start_mesh):
    """docs/bridges.md's walk-through: apply the example, publish a plain message to
    `legacy`, read its copy from `amq.topic`."""
    mesh = await start_mesh(EXAMPLE.read_text())
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        copies = await ch.declare_queue(exclusive=True)
        await copies.bind("amq.topic", "copied.#")

        async def consuming() -> bool:
            res = mesh.server.ctx.get("RabbitmqSource", "default", "legacy-orders")
            return "queue" in (res.status.model_extra or {})

        await eventually(consuming, timeout=20)
        legacy = await ch.get_exchange("legacy")
        await legacy.publish(
            aio_pika.Message(b'{"order": 42}', content_type="application/json"), "orders.new"
        )

        async def copied():
            return await copies.get(no_ack=True, fail=False)

        m = await eventually(copied, timeout=20, what="the copy on amq.topic")
        assert m.routing_key == "copied.orders.new"
        assert m.headers["ce-type"] == "dev.knative.rabbitmq.event"
        assert m.body == b'{"order": 42}'
        await ch.queue_delete("legacy-orders")
        await ch.exchange_delete("legacy")
