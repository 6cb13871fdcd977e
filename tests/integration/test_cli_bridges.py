"""The CLI verbs of the RabbitMQ bridges, as a user runs them against a running rabbitmesh:
create a RabbitmqSink and a RabbitmqSource wired to it through a broker and a trigger, send
nothing by hand, and read the event at a plain AMQP consumer."""

from __future__ import annotations

import aio_pika
import pytest
import yaml

from tests.integration.test_cli import rabbitmesh, rows
from tests.support.mesh import AMQP_URL
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_bridges_from_the_cli(start_mesh, app_prefix):
    mesh = await start_mesh(
        """
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: default}
        """
    )
    server = mesh.url
    exchange, out_q, in_q = f"{app_prefix}.out", f"{app_prefix}.out-q", f"{app_prefix}.in"
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel()
        x = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(out_q, durable=True)
        await q.bind(x, "#")
        for args in (
            ("rabbitmqsink", "create", "out", "--exchange", exchange, "--routing-key", "x.{type}"),
            ("trigger", "create", "t", "--broker", "default", "--sink", "rabbitmqsink:out"),
            (
                "source",
                "rabbitmq",
                "create",
                "in",
                "--queue",
                in_q,
                "--parallelism",
                "2",
                "--sink",
                "broker:default",
            ),
        ):
            run = await rabbitmesh(*args, server=server)
            assert run.code == 0, run
        listed = rows((await rabbitmesh("rabbitmqsink", "list", server=server)).out)
        assert listed[0]["NAME"] == "out" and listed[0]["READY"] == "True"
        got = await rabbitmesh("get", "rabbitmqsources", "in", "-o", "yaml", server=server)
        spec = yaml.safe_load(got.out)["spec"]
        config = spec["rabbitmqResourcesConfig"]
        assert (config["queueName"], config["parallelism"]) == (in_q, 2)

        async def source_consuming() -> bool:
            res = mesh.server.ctx.get("RabbitmqSource", "default", "in")
            return res is not None and "queue" in (res.status.model_extra or {})

        await eventually(source_consuming, timeout=20)
        await ch.default_exchange.publish(aio_pika.Message(b"hi", message_id="m1"), in_q)

        async def arrived():
            return await q.get(no_ack=True, fail=False)

        m = await eventually(arrived, timeout=20, what="the event at the AMQP consumer")
        assert m.routing_key == "x.dev.knative.rabbitmq.event"
        assert m.headers["ce-id"] == "m1"
        assert m.body == b"hi"
        await ch.queue_delete(in_q)
