"""Sequences: one channel per step, each reply feeding the next step (docs/contract.md §3–4)."""

from __future__ import annotations

import pytest

from tests.support.config import reapply
from tests.support.events import post_binary
from tests.support.rabbit import assert_reply_went_nowhere, list_names
from tests.support.responders import appending, data, echo, message
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def sequence(steps: list[str], reply: str = "", name: str = "seq", template: str = "") -> str:
    body = "\n".join(f"            - {s}" for s in steps)
    return f"""
        apiVersion: flows.knative.dev/v1
        kind: Sequence
        metadata: {{name: {name}}}
        spec:
          {template}
          steps:
{body}
          {reply}
        ---
        """


def uri(url: str, extra: str = "") -> str:
    return f'{{uri: "{url}"{", " + extra if extra else ""}}}'


async def test_each_reply_feeds_the_next_step_and_the_last_goes_to_reply(start_mesh, make_sink):
    steps = [await make_sink(appending(f" - {i}")) for i in range(3)]
    end = await make_sink()
    mesh = await start_mesh(
        sequence(
            [uri(s.url) for s in steps],
            reply=f"reply: {uri(end.url)}",
            template="channelTemplate: {apiVersion: messaging.knative.dev/v1, "
            "kind: InMemoryChannel}",
        )
    )
    status, eid = await post_binary(
        mesh.url + "/sequences/default/seq", data={"message": "hello"}, myext="kept"
    )
    assert status == 202
    (r,) = await end.wait_for(1)
    assert message(r) == "hello - 0 - 1 - 2"
    assert r.ce_id == eid and r.headers["ce-myext"] == "kept"
    assert [message(s.received[0]) for s in steps] == ["hello", "hello - 0", "hello - 0 - 1"]

    seq = mesh.server.ctx.get("Sequence", "default", "seq")
    assert seq.status.ready == "True"
    assert seq.status.address.url == mesh.settings.base_url + "/sequences/default/seq"
    extra = seq.status.model_extra
    assert [c["channel"]["name"] for c in extra["channelStatuses"]] == [
        "seq-kn-sequence-0",
        "seq-kn-sequence-1",
        "seq-kn-sequence-2",
    ]
    assert {c["channel"]["kind"] for c in extra["channelStatuses"]} == {"InMemoryChannel"}
    assert [s["subscription"]["name"] for s in extra["subscriptionStatuses"]] == [
        "seq-kn-sequence-0",
        "seq-kn-sequence-1",
        "seq-kn-sequence-2",
    ]
    assert (await post_binary(mesh.url + "/sequences/default/other"))[0] == 404


async def test_an_empty_reply_stops_the_chain(start_mesh, make_sink):
    first = await make_sink(echo())
    gate = await make_sink(lambda r, i: Reply(202) if data(r).get("drop") else echo()(r, i))
    last = await make_sink(echo())
    end = await make_sink()
    mesh = await start_mesh(
        sequence([uri(first.url), uri(gate.url), uri(last.url)], f"reply: {uri(end.url)}")
    )
    _, dropped = await post_binary(mesh.url + "/sequences/default/seq", data={"drop": True})
    _, passed = await post_binary(mesh.url + "/sequences/default/seq", data={"drop": False})
    await end.wait_for(1)
    await gate.wait_for(2)
    assert end.ids() == [passed]
    assert last.ids() == [passed]
    assert set(gate.ids()) == {dropped, passed}


async def test_without_reply_the_last_reply_is_dropped(start_mesh, make_sink):
    only = await make_sink(echo())
    mesh = await start_mesh(sequence([uri(only.url)]))
    status, eid = await post_binary(mesh.url + "/sequences/default/seq")
    assert status == 202
    await only.wait_for(1)
    worker = mesh.server.ctx.workers[
        mesh.server.names.flow_queue("sequence", "default", "seq-kn-sequence-0")
    ]
    await eventually(lambda: worker.stats.delivered == 1, what="the step's delivery acked")
    await assert_reply_went_nowhere(mesh, only, eid)


async def test_each_step_has_its_own_delivery(start_mesh, make_sink):
    ok = await make_sink(echo())
    failing = await make_sink(lambda r, i: Reply(500, body=b"boom"))
    dls, channel_dls = await make_sink(), await make_sink()
    end = await make_sink()
    step1_delivery = (
        f"delivery: {{retry: 2, backoffPolicy: linear, backoffDelay: PT0.05S, "
        f'deadLetterSink: {{uri: "{dls.url}"}}}}'
    )
    mesh = await start_mesh(
        sequence(
            [uri(ok.url), uri(failing.url, step1_delivery)],
            reply=f"reply: {uri(end.url)}",
            template="channelTemplate: {apiVersion: messaging.knative.dev/v1, kind: "
            "InMemoryChannel, spec: {delivery: {retry: 0, deadLetterSink: "
            f'{{uri: "{channel_dls.url}"}}}}}}}}',
        )
    )
    _, eid = await post_binary(mesh.url + "/sequences/default/seq", data={"n": 1})
    (dead,) = await dls.wait_for(1)
    assert dead.ce_id == eid
    assert dead.headers["ce-knativeerrordest"] == failing.url
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert len(failing.received) == 3  # the step's retry: 2, not the template's retry: 0
    assert len(ok.received) == 1 and end.received == [] and channel_dls.received == []


async def test_a_sequence_replying_into_a_sequence(start_mesh, make_sink):
    a, b = await make_sink(appending("a")), await make_sink(appending("b"))
    end = await make_sink()
    mesh = await start_mesh(
        sequence(
            [uri(a.url)],
            "reply: {ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: second}}",
            name="first",
        )
        + sequence([uri(b.url)], f"reply: {uri(end.url)}", name="second")
    )
    await post_binary(mesh.url + "/sequences/default/first", data={"message": ">"})
    (r,) = await end.wait_for(1)
    assert message(r) == ">ab"


async def test_updating_and_deleting_a_sequence_removes_its_generated_topology(
    start_mesh, make_sink
):
    sinks = [await make_sink(echo()) for _ in range(3)]
    mesh = await start_mesh(sequence([uri(s.url) for s in sinks]))
    prefix = mesh.settings.topology_prefix + ".sequence.default."
    assert len(list_names("exchanges", prefix)) == 3
    await reapply(mesh, sequence([uri(sinks[0].url)]))
    assert list_names("exchanges", prefix) == [prefix + "seq-kn-sequence-0"]
    # (no `:dlq`: without a dead-letter sink it is made only when needed, amqp/topology.py)
    assert list_names("queues", prefix) == [prefix + "seq-kn-sequence-0"]
    await reapply(mesh, "")
    assert list_names("exchanges", prefix) == []
    assert list_names("queues", prefix) == []
