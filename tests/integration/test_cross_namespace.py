"""Cross-namespace references (Knative 1.14's cross-namespace-event-links): a Trigger's
`spec.brokerRef` and a Subscription's `spec.channel` in another namespace deliver when the
setting allows it, and are refused with a clear condition otherwise."""

from __future__ import annotations

import aiohttp
import pytest

pytestmark = pytest.mark.integration

MANIFESTS = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: shared, namespace: platform}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: mine, namespace: team-a}
    spec:
      brokerRef:
        {apiVersion: eventing.knative.dev/v1, kind: Broker, name: shared, namespace: platform}
      subscriber: {uri: "SINK"}
    ---
    apiVersion: messaging.knative.dev/v1
    kind: Channel
    metadata: {name: feed, namespace: platform}
    ---
    apiVersion: messaging.knative.dev/v1
    kind: Subscription
    metadata: {name: mine, namespace: team-a}
    spec:
      channel:
        {apiVersion: messaging.knative.dev/v1, kind: Channel, name: feed, namespace: platform}
      subscriber: {uri: "SINK"}
    """


async def send(url: str, id_: str) -> int:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": id_,
        "ce-type": "t",
        "ce-source": "/s",
    }
    async with aiohttp.ClientSession() as s, s.post(url, headers=headers) as r:
        return r.status


async def test_refs_to_another_namespace_deliver_when_allowed(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(MANIFESTS.replace("SINK", sink.url), cross_namespace_event_links=True)
    ctx = mesh.server.ctx
    assert ctx.get("Trigger", "team-a", "mine").status.ready == "True"
    assert ctx.get("Subscription", "team-a", "mine").status.ready == "True"
    assert await send(f"{mesh.url}/platform/shared", "via-broker") == 202
    assert await send(f"{mesh.url}/channels/platform/feed", "via-channel") == 202
    got = await sink.wait_for(2)
    assert sorted(r.ce_id for r in got) == ["via-broker", "via-channel"]
    assert all(r.headers["Kn-Namespace"] == "team-a" for r in got)


async def test_refs_to_another_namespace_are_refused_by_default(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(MANIFESTS.replace("SINK", sink.url))
    ctx = mesh.server.ctx
    for kind in ("Trigger", "Subscription"):
        res = ctx.get(kind, "team-a", "mine")
        cond = next(c for c in res.status.conditions if c.type == "Ready")
        assert cond.status == "False"
        assert cond.reason == "CrossNamespaceRefNotAllowed"
        assert "RABBITMESH_CROSS_NAMESPACE_EVENT_LINKS" in cond.message
    assert await send(f"{mesh.url}/platform/shared", "x") == 202  # the broker works ...
    assert await send(f"{mesh.url}/channels/platform/feed", "y") == 202
    from tests.support.rabbit import list_names

    # ... and no queue of team-a was made to take its events.
    assert [q for q in list_names("queues", mesh.settings.topology_prefix) if "team-a" in q] == []
    assert sink.received == []
