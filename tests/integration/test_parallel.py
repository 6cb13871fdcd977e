"""Parallels: an ingress channel fanning out to filtered branches (docs/contract.md §3–4)."""

from __future__ import annotations

import pytest

from tests.support.config import reapply
from tests.support.events import post_binary
from tests.support.rabbit import assert_reply_went_nowhere, list_names, rabbitmqctl
from tests.support.responders import appending, echo, event_headers, filtering, message, of_type
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def uri(url: str) -> str:
    return f'{{uri: "{url}"}}'


def parallel(branches: list[str], reply: str = "", name: str = "par") -> str:
    body = "\n".join(f"            - {b}" for b in branches)
    return f"""
        apiVersion: flows.knative.dev/v1
        kind: Parallel
        metadata: {{name: {name}}}
        spec:
          channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
          branches:
{body}
          {reply}
        ---
        """


def branch(subscriber: str, filter_: str = "", reply: str = "", delivery: str = "") -> str:
    parts = [f"subscriber: {uri(subscriber)}"]
    if filter_:
        parts.append(f"filter: {uri(filter_)}")
    if reply:
        parts.append(f"reply: {uri(reply)}")
    if delivery:
        parts.append(f"delivery: {delivery}")
    return "{" + ", ".join(parts) + "}"


async def test_filters_route_each_event_to_its_branches_only(start_mesh, make_sink):
    img_filter = await make_sink(filtering(of_type("img.hj.com")))
    text_filter = await make_sink(filtering(of_type("text.hj.com")))
    img, text, every = (
        await make_sink(appending(" - image")),
        await make_sink(appending(" - text")),
        await make_sink(appending(" - every")),
    )
    end = await make_sink()
    mesh = await start_mesh(
        parallel(
            [
                branch(img.url, img_filter.url),
                branch(text.url, text_filter.url),
                branch(every.url),  # no filter: always runs
            ],
            reply=f"reply: {uri(end.url)}",
        )
    )
    url = mesh.url + "/parallels/default/par"
    assert (await post_binary(url, "img.hj.com", {"message": "i"}))[0] == 202
    assert (await post_binary(url, "text.hj.com", {"message": "t"}))[0] == 202
    got = await end.wait_for(4)
    assert sorted(message(r) for r in got) == ["i - every", "i - image", "t - every", "t - text"]
    assert [r.headers["ce-type"] for r in img.received] == ["img.hj.com"]
    assert [r.headers["ce-type"] for r in text.received] == ["text.hj.com"]
    assert len(every.received) == 2
    assert len(img_filter.received) == len(text_filter.received) == 2

    par = mesh.server.ctx.get("Parallel", "default", "par")
    assert par.status.ready == "True"
    assert par.status.address.url == mesh.settings.base_url + "/parallels/default/par"
    extra = par.status.model_extra
    assert extra["ingressChannelStatus"]["channel"]["name"] == "par-kn-parallel"
    b0 = extra["branchStatuses"][0]
    assert b0["filterSubscriptionStatus"]["subscription"]["name"] == "par-kn-parallel-filter-0"
    assert b0["filterChannelStatus"]["channel"]["name"] == "par-kn-parallel-0"
    assert b0["subscriberSubscriptionStatus"]["subscription"]["name"] == "par-kn-parallel-0"
    assert (await post_binary(mesh.url + "/parallels/default/nope"))[0] == 404


async def test_the_subscriber_gets_the_event_as_the_filter_replied_it(start_mesh, make_sink):
    def tagging(r, _i):
        headers = event_headers(r)
        headers["ce-filtered"] = "yes"
        return Reply(200, headers, r.body)

    tagger = await make_sink(tagging)
    sub = await make_sink()
    mesh = await start_mesh(parallel([branch(sub.url, tagger.url)]))
    _, eid = await post_binary(mesh.url + "/parallels/default/par")
    (r,) = await sub.wait_for(1)
    assert r.ce_id == eid and r.headers["ce-filtered"] == "yes"


async def test_replies_go_to_the_branch_reply_else_the_parallel_reply(start_mesh, make_sink):
    own, shared = await make_sink(), await make_sink()
    a, b = await make_sink(appending("a")), await make_sink(appending("b"))
    mesh = await start_mesh(
        parallel([branch(a.url, reply=own.url), branch(b.url)], reply=f"reply: {uri(shared.url)}")
    )
    await post_binary(mesh.url + "/parallels/default/par", data={"message": ""})
    (r1,) = await own.wait_for(1)
    (r2,) = await shared.wait_for(1)
    assert message(r1) == "a" and message(r2) == "b"


async def test_without_any_reply_the_subscriber_reply_is_dropped(start_mesh, make_sink):
    sub = await make_sink(echo())
    mesh = await start_mesh(parallel([branch(sub.url)]))
    status, eid = await post_binary(mesh.url + "/parallels/default/par")
    assert status == 202
    await sub.wait_for(1)
    queue = mesh.server.names.flow_queue("parallel", "default", "par-kn-parallel-0")
    worker = mesh.server.ctx.workers[queue]
    await eventually(lambda: worker.stats.delivered == 1, what="the delivery acked")
    await assert_reply_went_nowhere(mesh, sub, eid)


async def test_branch_delivery_applies_to_the_subscriber_only(start_mesh, make_sink):
    # The filter fails twice: with the branch's retry: 1 it would dead-letter; it does not,
    # since the filter has the channel's (here the default) delivery.
    flaky_filter = await make_sink(lambda r, i: Reply(503) if i < 2 else echo()(r, i))
    failing = await make_sink(lambda r, i: Reply(500))
    dls = await make_sink()
    delivery = f'{{retry: 1, backoffDelay: PT0.05S, deadLetterSink: {{uri: "{dls.url}"}}}}'
    mesh = await start_mesh(
        parallel([branch(failing.url, flaky_filter.url, delivery=delivery)]),
        default_backoff_delay="PT0.05S",
    )
    _, eid = await post_binary(mesh.url + "/parallels/default/par")
    (dead,) = await dls.wait_for(1)
    assert dead.ce_id == eid
    assert dead.headers["ce-knativeerrordest"] == failing.url
    assert len(flaky_filter.received) == 3 and len(failing.received) == 2


async def test_adding_and_removing_a_filter_and_deleting_the_parallel(start_mesh, make_sink):
    sub = await make_sink()
    keep_none = await make_sink(filtering(lambda r: False))
    mesh = await start_mesh(parallel([branch(sub.url)]))
    url = mesh.url + "/parallels/default/par"
    await post_binary(url)
    await sub.wait_for(1)
    await reapply(mesh, parallel([branch(sub.url, keep_none.url)]))
    _, eid = await post_binary(url)
    await keep_none.wait_for(1)
    # The filter said no: nothing more reaches the subscriber, not even through the old binding.
    filter_queue = mesh.server.names.flow_queue("parallel", "default", "par-kn-parallel-filter-0")
    worker = mesh.server.ctx.workers[filter_queue]
    await eventually(lambda: worker.stats.delivered == 1, what="the filter's answer acked")
    assert len(sub.received) == 1
    prefix = mesh.settings.topology_prefix + ".parallel.default."
    assert list_names("exchanges", prefix) == [
        prefix + "par-kn-parallel",
        prefix + "par-kn-parallel-0",
    ]
    bindings = rabbitmqctl(
        "list_bindings", "-q", "--no-table-headers", "source_name", "destination_name"
    )
    sub_queue = prefix + "par-kn-parallel-0"
    assert [
        line.split("\t")[0] for line in bindings.splitlines() if line.endswith("\t" + sub_queue)
    ] == ["", prefix + "par-kn-parallel-0"]  # the default exchange, and the branch channel only
    await reapply(mesh, "")
    assert list_names("exchanges", prefix) == []
    assert list_names("queues", prefix) == []
