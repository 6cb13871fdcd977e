"""Channels and Subscriptions (docs/contract.md §2–4) against a real RabbitMQ and HTTP sinks."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.config import reapply
from tests.support.events import post, post_binary
from tests.support.manifests import broker_and_trigger, documents
from tests.support.rabbit import list_names, rabbitmqctl
from tests.support.responders import appending, message
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def channel(name: str = "ch", kind: str = "Channel", spec: str = "{}") -> str:
    return f"""
        apiVersion: messaging.knative.dev/v1
        kind: {kind}
        metadata: {{name: {name}}}
        spec: {spec}
        ---
        """


def subscription(name: str, body: str, channel_name: str = "ch", kind: str = "Channel") -> str:
    return f"""
        apiVersion: messaging.knative.dev/v1
        kind: Subscription
        metadata: {{name: {name}}}
        spec:
          channel: {{apiVersion: messaging.knative.dev/v1, kind: {kind}, name: {channel_name}}}
          {body}
        ---
        """


def uri(url: str) -> str:
    return f'{{uri: "{url}"}}'


async def test_fanout_to_every_subscription_and_twice_to_a_subscriber_subscribed_twice(
    start_mesh, make_sink
):
    one, two = await make_sink(), await make_sink()
    mesh = await start_mesh(
        channel("imc1", kind="InMemoryChannel")
        + subscription("a", f"subscriber: {uri(one.url)}", "imc1", "InMemoryChannel")
        + subscription("b", f"subscriber: {uri(two.url)}", "imc1", "InMemoryChannel")
        + subscription("c", f"subscriber: {uri(one.url)}", "imc1", "InMemoryChannel")
    )
    status, eid = await post_binary(
        mesh.url + "/channels/default/imc1", data={"message": "hi"}, myext="x"
    )
    assert status == 202
    got = await one.wait_for(2)
    (other,) = await two.wait_for(1)
    for r in [*got, other]:
        assert r.headers["ce-id"] == eid
        assert r.headers["ce-myext"] == "x"
        assert r.headers["prefer"] == "reply"
        assert r.headers["kn-namespace"] == "default"
        assert json.loads(r.body) == {"message": "hi"}
    res = mesh.server.ctx.get("Channel", "default", "imc1")
    assert res.status.address.url == mesh.settings.base_url + "/channels/default/imc1"
    assert res.status.ready == "True"
    assert res.status.model_extra["channel"]["kind"] == "InMemoryChannel"
    sub = mesh.server.ctx.get("Subscription", "default", "a")
    assert sub.status.ready == "True"
    assert sub.status.model_extra["physicalSubscription"] == {"subscriberUri": one.url}


async def test_channel_template_is_recorded_and_unknown_channels_are_404(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        channel(
            spec="{channelTemplate: {apiVersion: messaging.knative.dev/v1beta1, "
            "kind: KafkaChannel, spec: {numPartitions: 3}}}"
        )
        + subscription("orphan", f"subscriber: {uri(sink.url)}", channel_name="nope")
    )
    res = mesh.server.ctx.get("Channel", "default", "ch")
    assert res.status.model_extra["channel"] == {
        "apiVersion": "messaging.knative.dev/v1beta1",
        "kind": "KafkaChannel",
        "name": "ch",
        "namespace": "default",
    }
    orphan = mesh.server.ctx.get("Subscription", "default", "orphan")
    ready = next(c for c in orphan.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ChannelDoesNotExist")
    status, _ = await post_binary(mesh.url + "/channels/default/nope")
    assert status == 404
    status, _, body = await post(mesh.url + "/channels/default/ch", method="GET")
    assert status == 405
    # A KafkaChannel template changes nothing: the channel is a RabbitMQ fanout exchange.
    assert (await post_binary(mesh.url + "/channels/default/ch"))[0] == 202


async def test_replies_go_to_a_hosted_channel_and_to_an_external_url(start_mesh, make_sink):
    final, external = await make_sink(), await make_sink()
    app = await make_sink(appending(" - replied"))
    mesh = await start_mesh(
        channel("in")
        + channel("out")
        + subscription(
            "to-channel",
            f"subscriber: {uri(app.url)}\n"
            "          reply: {ref: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel,"
            " name: out}}",
            "in",
        )
        + subscription(
            "to-url", f"subscriber: {uri(app.url)}\n          reply: {uri(external.url)}", "in"
        )
        + subscription("last", f"subscriber: {uri(final.url)}", "out")
    )
    status, eid = await post_binary(mesh.url + "/channels/default/in", data={"message": "m"})
    assert status == 202
    (a,) = await final.wait_for(1)
    (b,) = await external.wait_for(1)
    for r in (a, b):
        assert r.headers["ce-id"] == eid
        assert message(r) == "m - replied"
    sub = mesh.server.ctx.get("Subscription", "default", "to-url")
    assert sub.status.model_extra["physicalSubscription"]["replyUri"] == external.url


async def test_a_failing_reply_destination_is_retried_without_calling_the_subscriber_again(
    start_mesh, make_sink
):
    app = await make_sink(appending("!"))
    reply = await make_sink(lambda r, i: Reply(503) if i < 2 else Reply(200))
    mesh = await start_mesh(
        channel(spec="{delivery: {retry: 3, backoffPolicy: linear, backoffDelay: PT0.05S}}")
        + subscription("s", f"subscriber: {uri(app.url)}\n          reply: {uri(reply.url)}")
    )
    await post_binary(mesh.url + "/channels/default/ch", data={"message": "m"})
    got = await reply.wait_for(3)
    assert [message(r) for r in got] == ["m!"] * 3
    assert len(app.received) == 1


async def test_subscription_without_subscriber_forwards_to_its_reply(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        channel("a")
        + channel("b")
        + subscription(
            "forward",
            "reply: {ref: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: b}}",
            "a",
        )
        + subscription("end", f"subscriber: {uri(sink.url)}", "b")
    )
    status, eid = await post_binary(mesh.url + "/channels/default/a")
    assert status == 202
    (r,) = await sink.wait_for(1)
    assert r.ce_id == eid


async def test_delivery_is_inherited_from_the_channel_then_dead_letters(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(503, body=b"down"))
    dls = await make_sink()
    mesh = await start_mesh(
        channel(
            spec="{delivery: {retry: 2, backoffPolicy: linear, backoffDelay: PT0.05S, "
            f"deadLetterSink: {uri(dls.url)}}}}}"
        )
        + subscription("s", f"subscriber: {uri(sub.url)}")
    )
    status, eid = await post_binary(mesh.url + "/channels/default/ch", data={"k": "v"})
    assert status == 202
    (dead,) = await dls.wait_for(1)
    assert len(sub.received) == 3
    assert dead.ce_id == eid
    assert dead.headers["ce-knativeerrordest"] == sub.url
    assert dead.headers["ce-knativeerrorcode"] == "503"
    assert base64.b64decode(dead.headers["ce-knativeerrordata"]) == b"down"
    assert json.loads(dead.body) == {"k": "v"}
    assert (
        mesh.server.ctx.get("Channel", "default", "ch").status.model_extra["deadLetterSinkUri"]
        == dls.url
    )


async def test_subscription_delivery_overrides_the_channel(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(500))
    channel_dls, own_dls = await make_sink(), await make_sink()
    mesh = await start_mesh(
        channel(spec=f"{{delivery: {{retry: 5, deadLetterSink: {uri(channel_dls.url)}}}}}")
        + subscription(
            "s",
            f"subscriber: {uri(sub.url)}\n"
            f"          delivery: {{retry: 0, deadLetterSink: {uri(own_dls.url)}}}",
        )
    )
    await post_binary(mesh.url + "/channels/default/ch")
    await own_dls.wait_for(1)
    assert len(sub.received) == 1 and channel_dls.received == []


async def test_reply_into_a_broker_is_routed_by_its_triggers(start_mesh, make_sink):
    app = await make_sink(appending("+"))
    sink = await make_sink()
    mesh = await start_mesh(
        documents(
            broker_and_trigger(sink.url, trigger="tr", filter_type="com.example.test"),
            channel()
            + subscription(
                "s",
                f"subscriber: {uri(app.url)}\n"
                "          reply: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, "
                "name: br}}",
            ),
        )
    )
    await post_binary(mesh.url + "/channels/default/ch", data={"message": "x"})
    (r,) = await sink.wait_for(1)
    assert message(r) == "x+"
    assert "ce-knativearrivaltime" in r.headers


async def test_reply_to_a_missing_hosted_resource_waits_in_the_queue(start_mesh, make_sink):
    app = await make_sink(appending("+"))
    mesh = await start_mesh(
        channel()
        + subscription(
            "s",
            f"subscriber: {uri(app.url)}\n"
            "          reply: {ref: {apiVersion: messaging.knative.dev/v1, kind: Channel, "
            "name: missing}}",
        )
    )
    sub = mesh.server.ctx.get("Subscription", "default", "s")
    ready = next(c for c in sub.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ReplyResolveFailed")
    assert (await post_binary(mesh.url + "/channels/default/ch"))[0] == 202
    from tests.support.rabbit import queue_depth

    queue = mesh.server.names.subscription_queue("default", "s")
    await eventually(lambda: queue_depth(queue), what="the event waiting in its queue")
    assert app.received == []


async def test_deleting_channels_and_subscriptions_removes_their_topology(start_mesh, make_sink):
    sink = await make_sink()
    external = await make_sink()
    mesh = await start_mesh(
        channel()
        + subscription("s", f"subscriber: {uri(sink.url)}\n          reply: {uri(external.url)}")
    )
    prefix = mesh.settings.topology_prefix
    assert list_names("queues", prefix + ".subscription.")
    assert list_names("exchanges", prefix + ".channel.")
    await reapply(mesh, "")
    assert list_names("queues", prefix + ".subscription.") == []
    assert list_names("exchanges", prefix + ".channel.") == []


async def test_moving_a_subscription_to_another_channel_unbinds_the_old_one(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        channel("a") + channel("b") + subscription("s", f"subscriber: {uri(sink.url)}", "a")
    )
    await reapply(
        mesh, channel("a") + channel("b") + subscription("s", f"subscriber: {uri(sink.url)}", "b")
    )
    queue = mesh.server.names.subscription_queue("default", "s")
    out = rabbitmqctl(
        "list_bindings", "-q", "--no-table-headers", "source_name", "destination_name"
    )
    sources = sorted(
        line.split("\t")[0] for line in out.splitlines() if line.endswith("\t" + queue)
    )
    assert sources == ["", mesh.server.names.channel_exchange("default", "b")]
    _, eid = await post_binary(mesh.url + "/channels/default/b")
    (r,) = await sink.wait_for(1)
    assert r.ce_id == eid
