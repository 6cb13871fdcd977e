"""The admin REST API (docs/contract.md §7) against a real rabbitmesh and RabbitMQ."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from tests.support.api import BROKERS, EVENTTYPES, SECRETS, TRIGGERS, broker, call, ready, trigger
from tests.support.events import post_binary, post_structured
from tests.support.rabbit import list_names
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NS = "default"


async def test_create_read_replace_delete_and_their_errors(start_mesh):
    mesh = await start_mesh("")
    brokers = mesh.url + BROKERS.format(ns=NS)

    status, created = await call("POST", brokers, broker("br1"))
    assert status == 201, created
    assert ready(created) == ("True", "BrokerReady")
    assert created["status"]["address"]["url"].endswith("/default/br1")
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["resourceVersion"]

    status, body = await call("POST", brokers, broker("br1"))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    assert "already exists" in body["error"]

    assert (await call("GET", f"{brokers}/br1"))[0] == 200
    status, body = await call("GET", f"{brokers}/nope")
    assert status == 404 and "nope" in body["error"]
    status, body = await call("GET", mesh.url + "/apis/eventing.knative.dev/v1/namespaces/x/nopes")
    assert status == 404 and "nopes" in body["error"]

    status, body = await call("POST", mesh.url + BROKERS.format(ns="team"), broker("br2", "team"))
    assert status == 201, body
    status, listed = await call("GET", brokers)
    assert listed["kind"] == "BrokerList" and [b["metadata"]["name"] for b in listed["items"]] == [
        "br1"
    ]
    status, everywhere = await call("GET", mesh.url + "/apis/eventing.knative.dev/v1/brokers")
    assert {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in everywhere["items"]} == {
        ("default", "br1"),
        ("team", "br2"),
    }

    changed = broker("br1", delivery={"retry": 2})
    changed["metadata"]["resourceVersion"] = meta["resourceVersion"]
    status, replaced = await call("PUT", f"{brokers}/br1", changed)
    assert status == 200, replaced
    assert replaced["metadata"]["generation"] == 2
    assert replaced["status"]["observedGeneration"] == 2
    assert replaced["spec"]["delivery"] == {"retry": 2}
    status, body = await call("PUT", f"{brokers}/br1", changed)  # resourceVersion is stale now
    assert (status, body["reason"]) == (409, "Conflict")
    status, body = await call("PUT", f"{brokers}/other", broker("br1"))
    assert status == 400 and "does not match" in body["error"]
    status, body = await call("PUT", f"{brokers}/br1", broker("br1", "team"))
    assert status == 400 and "namespace" in body["error"]
    assert (await call("PUT", f"{brokers}/ghost", broker("ghost")))[0] == 404
    # PATCH takes a merge patch only (tests/integration/test_watch_patch.py).
    assert (await call("PATCH", f"{brokers}/br1", broker("br1")))[0] == 415

    status, body = await call(
        "POST",
        mesh.url + TRIGGERS.format(ns=NS),
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {"subscriber": {"uri": "not-a-url"}, "colour": "red"},
        },
    )
    assert status == 422 and body["reason"] == "Invalid"
    fields = {d["field"] for d in body["details"]}
    assert {"spec.broker", "spec.subscriber", "spec.colour"} <= fields, body
    status, body = await call(
        "POST",
        mesh.url + TRIGGERS.format(ns=NS),
        trigger("t", "br1", "http://x/", filter={"attributes": {"Type": "x"}}),
    )
    assert status == 422 and [d["field"] for d in body["details"]] == [
        "spec.filter.attributes.Type"
    ]
    assert "lowercase" in body["details"][0]["message"]
    status, body = await call("POST", brokers, text="{not json", content_type="application/json")
    assert status == 400 and "malformed" in body["error"]
    status, body = await call("POST", brokers, trigger("t", "br1", "http://x/"))
    assert status == 400 and "Trigger" in body["error"]

    status, deleted = await call("DELETE", f"{brokers}/br1")
    assert status == 200 and deleted["metadata"]["name"] == "br1"
    assert (await call("GET", f"{brokers}/br1"))[0] == 404
    assert (await call("DELETE", f"{brokers}/br1"))[0] == 404


async def test_a_trigger_waits_for_its_broker(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh("")
    triggers = mesh.url + TRIGGERS.format(ns=NS)
    status, body = await call("POST", triggers, trigger("tr", "late", sink.url))
    assert status == 201
    assert ready(body) == ("False", "BrokerDoesNotExist")
    assert "late" in body["status"]["conditions"][0]["message"]
    assert (await call("POST", mesh.url + BROKERS.format(ns=NS), broker("late")))[0] == 201
    status, body = await call("GET", f"{triggers}/tr")
    assert ready(body) == ("True", "TriggerReady")
    status, eid = await post_binary(mesh.url + "/default/late")
    assert status == 202
    (got,) = await sink.wait_for(1)
    assert got.ce_id == eid


async def test_apply_creates_configures_and_is_all_or_nothing(start_mesh):
    mesh = await start_mesh("")
    docs = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: a}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec: {broker: a, subscriber: {uri: "http://127.0.0.1:9/"}}
"""
    status, body = await call("POST", mesh.url + "/apply?namespace=team", text=docs)
    assert status == 200, body
    assert [(r["kind"], r["namespace"], r["result"]) for r in body["results"]] == [
        ("Broker", "team", "created"),
        ("Trigger", "team", "created"),
    ]
    assert [ready(i)[0] for i in body["items"]] == ["True", "True"]
    status, body = await call("POST", mesh.url + "/apply?namespace=team", text=docs)
    assert [r["result"] for r in body["results"]] == ["unchanged", "unchanged"]
    changed = docs.replace('uri: "http://127.0.0.1:9/"', 'uri: "http://127.0.0.1:8/"')
    status, body = await call("POST", mesh.url + "/apply?namespace=team", text=changed)
    assert [r["result"] for r in body["results"]] == ["unchanged", "configured"]

    bad = docs.replace("name: a}", "name: b}") + "---\nkind: Broker\nmetadata: {name: c}\n"
    status, body = await call("POST", mesh.url + "/apply", text=bad)
    assert status == 422 and body["details"][0]["document"] == 3
    assert body["details"][0]["field"] == "apiVersion"
    assert (await call("GET", mesh.url + BROKERS.format(ns=NS) + "/b"))[0] == 404
    status, body = await call("POST", mesh.url + "/apply", text="a: [unclosed")
    assert status == 400


async def test_the_admin_token_guards_every_change(start_mesh):
    mesh = await start_mesh("", admin_token="s3cret-t0ken")
    brokers = mesh.url + BROKERS.format(ns=NS)
    status, body = await call("POST", brokers, broker("br"))
    assert status == 401 and "Bearer" in body["error"]
    assert (await call("POST", brokers, broker("br"), token="wrong"))[0] == 401
    assert (await call("POST", mesh.url + "/apply", text="{}", token="nope"))[0] == 401
    assert (await call("GET", brokers))[0] == 200  # reading needs no token
    assert (await call("POST", brokers, broker("br"), token="s3cret-t0ken"))[0] == 201
    assert (await call("DELETE", f"{brokers}/br"))[0] == 401
    assert (await call("DELETE", f"{brokers}/br", token="s3cret-t0ken"))[0] == 200


async def test_secret_values_never_leave(start_mesh, caplog):
    # rabbitmesh's own logs at their most verbose (setup_logging keeps aiormq, which would
    # dump whole frames at debug, at ERROR and above whatever RABBITMESH_LOG_LEVEL is).
    caplog.set_level(logging.DEBUG, logger="rabbitmesh")
    value = "hunter2-do-not-print"
    mesh = await start_mesh("")
    secrets = mesh.url + SECRETS.format(ns=NS)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gl"},
        "stringData": {"token": value},
    }
    answers = [await call("POST", secrets, secret)]
    answers.append(await call("GET", f"{secrets}/gl"))
    answers.append(await call("GET", secrets))
    answers.append(await call("GET", mesh.url + "/api/v1/secrets"))
    status, shown = answers[1]
    assert status == 200 and shown["data"] == {"token": "<redacted>"}
    # Sent back as read (redacted), the stored value is kept.
    answers.append(await call("PUT", f"{secrets}/gl", shown))
    answers.append(await call("POST", mesh.url + "/apply", text=json.dumps(shown)))
    stored = mesh.server.ctx.get("Secret", NS, "gl")
    assert stored.value("token") == value
    # A bad value is refused without being repeated.
    answers.append(
        await call("PUT", f"{secrets}/gl", {**secret, "stringData": {}, "data": {"k": value}})
    )
    assert answers[-1][0] == 422
    for _status, body in answers:
        assert value not in str(body)
    assert value not in caplog.text
    assert base64.b64encode(value.encode()).decode() not in caplog.text


async def test_a_namespace_with_injection_gets_a_default_broker(start_mesh):
    mesh = await start_mesh("")
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team-a", "labels": {"eventing.knative.dev/injection": "enabled"}},
    }
    status, body = await call("POST", mesh.url + "/api/v1/namespaces", ns)
    assert status == 201, body
    url = mesh.url + BROKERS.format(ns="team-a") + "/default"
    status, b = await call("GET", url)
    assert status == 200 and ready(b) == ("True", "BrokerReady")
    assert b["metadata"]["labels"] == {"eventing.knative.dev/namespaceInjected": "true"}
    assert b["metadata"]["ownerReferences"][0]["kind"] == "Namespace"
    status, body = await call("DELETE", url)
    assert status == 409 and "Namespace team-a" in body["error"]
    exchange = f"{mesh.settings.topology_prefix}.broker.team-a.default"
    assert list_names("exchanges", exchange) == [exchange]
    assert (await call("DELETE", mesh.url + "/api/v1/namespaces/team-a"))[0] == 200
    assert (await call("GET", url))[0] == 404
    assert list_names("exchanges", exchange) == []


async def test_event_types_of_both_versions_and_of_sources(start_mesh):
    mesh = await start_mesh("")
    ets = mesh.url + EVENTTYPES.format(ns=NS)
    v2 = {
        "apiVersion": "eventing.knative.dev/v1beta2",
        "kind": "EventType",
        "metadata": {"name": "old"},
        "spec": {"type": "com.example.old", "source": "/old", "broker": "br"},
    }
    status, body = await call(
        "POST", mesh.url + "/apis/eventing.knative.dev/v1beta2/namespaces/default/eventtypes", v2
    )
    assert status == 201 and ready(body) == ("False", "ResourceDoesNotExist")
    v3 = {
        "apiVersion": "eventing.knative.dev/v1beta3",
        "kind": "EventType",
        "metadata": {"name": "new"},
        "spec": {"attributes": [{"name": "type", "value": "com.example.new"}]},
    }
    status, body = await call("POST", ets, v3)
    assert status == 422 and "specversion" in body["error"]
    v3["spec"]["attributes"] += [{"name": n} for n in ("source", "specversion", "id")]
    assert (await call("POST", ets, v3))[0] == 201
    await call("POST", mesh.url + BROKERS.format(ns=NS), broker("br"))
    ping = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "sink": {
                "ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "br"}
            },
        },
    }
    status, body = await call(
        "POST", mesh.url + "/apis/sources.knative.dev/v1/namespaces/default/pingsources", ping
    )
    assert status == 201 and ready(body) == ("True", None)
    assert body["status"]["ceAttributes"] == [
        {
            "type": "dev.knative.sources.ping",
            "source": "/apis/v1/namespaces/default/pingsources/tick",
        }
    ]
    status, listed = await call("GET", ets)
    by_type = {}
    for et in listed["items"]:
        spec = et["spec"]
        t = spec.get("type") or next(a["value"] for a in spec["attributes"] if a["name"] == "type")
        by_type[t] = et
    assert set(by_type) == {"com.example.old", "com.example.new", "dev.knative.sources.ping"}
    assert ready(by_type["com.example.old"])[0] == "True"  # its broker exists now
    assert by_type["dev.knative.sources.ping"]["metadata"]["ownerReferences"][0]["kind"] == (
        "PingSource"
    )
    await call(
        "DELETE", mesh.url + "/apis/sources.knative.dev/v1/namespaces/default/pingsources/tick"
    )
    status, listed = await call("GET", ets)
    assert len(listed["items"]) == 2


async def test_event_types_seen_at_ingress_are_registered_when_enabled(start_mesh):
    mesh = await start_mesh(
        """
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: br}
        """,
        eventtype_auto_create=True,
    )
    assert len(mesh.server.build_app().middlewares) == 1
    for type_ in ("com.example.a", "com.example.a"):
        assert (await post_binary(mesh.url + "/default/br", type_))[0] == 202
    event = {"specversion": "1.0", "id": "s1", "source": "/s", "type": "com.example.b"}
    assert (await post_structured(mesh.url + "/default/br", event))[0] == 202

    async def registered() -> set[str]:
        _, listed = await call("GET", mesh.url + EVENTTYPES.format(ns=NS))
        return {
            next(a["value"] for a in et["spec"]["attributes"] if a["name"] == "type")
            for et in listed["items"]
        }

    await eventually(
        lambda: _eq(registered(), {"com.example.a", "com.example.b"}),
        timeout=10,
        what="auto-created EventTypes",
    )
    _, listed = await call("GET", mesh.url + EVENTTYPES.format(ns=NS))
    et = listed["items"][0]
    assert et["metadata"]["name"].startswith("et-br-")
    assert et["spec"]["reference"]["kind"] == "Broker"
    assert (await call("DELETE", mesh.url + BROKERS.format(ns=NS) + "/br"))[0] == 200
    _, listed = await call("GET", mesh.url + EVENTTYPES.format(ns=NS))
    assert listed["items"] == []  # owned by the broker: gone with it


async def _eq(value, expected) -> bool:
    return await value == expected


async def test_event_types_are_not_registered_by_default(start_mesh):
    mesh = await start_mesh(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: br}\n"
    )
    assert (await post_binary(mesh.url + "/default/br", "com.example.a"))[0] == 202
    # Off: the middleware (there so config-features can switch it on) passes requests on.
    assert not mesh.server.plane.autotypes_enabled
    _, listed = await call("GET", mesh.url + EVENTTYPES.format(ns=NS))
    assert listed["items"] == []


async def test_default_dead_letter_sink(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(500))
    dls = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: br}}
        spec: {{delivery: {{retry: 0}}}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: tr}}
        spec: {{broker: br, subscriber: {{uri: "{sub.url}"}}}}
        """,
        default_dead_letter_sink=dls.url,
    )
    _, eid = await post_binary(mesh.url + "/default/br")
    (dead,) = await dls.wait_for(1)
    assert dead.ce_id == eid and dead.headers["ce-knativeerrorcode"] == "500"
    _, tr = await call("GET", mesh.url + TRIGGERS.format(ns=NS) + "/tr")
    assert tr["status"]["deadLetterSinkUri"] == dls.url


async def test_updates_keep_queued_events(start_mesh, make_sink):
    """A subscriber change reaches events already queued; a filter change rebinds first."""
    down = await make_sink(lambda r, i: Reply(503))
    up = await make_sink()
    mesh = await start_mesh(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: br}\n"
    )
    triggers = mesh.url + TRIGGERS.format(ns=NS)
    tr = trigger(
        "tr",
        "br",
        down.url,
        filter={"attributes": {"type": "com.example.a"}},
        delivery={"retry": 50, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"},
    )
    assert (await call("POST", triggers, tr))[0] == 201
    ids = [f"q{i}" for i in range(20)]
    for i in ids:
        assert (await post_binary(mesh.url + "/default/br", "com.example.a", id_=i))[0] == 202
    await down.wait_for(20)  # all tried once, all waiting to be retried
    tr["spec"]["subscriber"] = {"uri": up.url}
    assert (await call("PUT", f"{triggers}/tr", tr))[0] == 200
    await eventually(lambda: set(ids) <= set(up.ids()), timeout=15, what="queued events moved")

    # Filter change while events flow: from `type` to `source`; both match every event sent.
    sent: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            status, eid = await post_binary(
                mesh.url + "/default/br", "com.example.a", id_=f"f{n}", source="s1"
            )
            assert status == 202
            sent.append(eid)
            n += 1

    producer = asyncio.create_task(produce())
    await eventually(lambda: len(sent) >= 20, what="events flowing")
    tr["spec"]["filter"] = {"attributes": {"source": "s1"}}
    assert (await call("PUT", f"{triggers}/tr", tr))[0] == 200
    await eventually(lambda: len(sent) >= 60, what="more events after the change")
    stop.set()
    await producer
    await eventually(
        lambda: set(sent) <= set(up.ids()), timeout=15, what="every event across the rebind"
    )
    assert mesh.server.ctx.bindings[f"{mesh.settings.topology_prefix}.trigger.default.tr"] == {
        (f"{mesh.settings.topology_prefix}.broker.default.br", "#")
    }


async def test_deleting_everything_leaves_only_infrastructure(start_mesh, make_sink):
    """Per-install objects are infrastructure, not resources: `{p}.delay` and its
    `{p}.delay.{ms}ms` queues (shared retry waits), `{p}.parked` (non-CloudEvent messages)
    and `{p}.store` (the resource store itself). Nothing else may remain."""
    failing = await make_sink(lambda r, i: Reply(500) if i == 0 else Reply(200))
    mesh = await start_mesh("")
    p = mesh.settings.topology_prefix
    docs = f"""
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: br}}
spec: {{delivery: {{retry: 1, backoffDelay: PT0.05S}}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: tr}}
spec:
  broker: br
  subscriber: {{uri: "{failing.url}"}}
  delivery: {{deadLetterSink: {{uri: "{failing.url}"}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: team, labels: {{eventing.knative.dev/injection: enabled}}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: tr2, namespace: team}}
spec: {{broker: default, subscriber: {{uri: "{failing.url}"}}}}
---
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {{name: ch}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: sub}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: ch}}
  subscriber: {{uri: "{failing.url}"}}
  reply: {{uri: "{failing.url}"}}
  delivery: {{deadLetterSink: {{uri: "{failing.url}"}}}}
---
apiVersion: flows.knative.dev/v1
kind: Sequence
metadata: {{name: seq}}
spec:
  steps: [{{uri: "{failing.url}"}}, {{uri: "{failing.url}"}}]
  reply: {{uri: "{failing.url}"}}
---
apiVersion: flows.knative.dev/v1
kind: Parallel
metadata: {{name: par}}
spec:
  branches:
    - {{filter: {{uri: "{failing.url}"}}, subscriber: {{uri: "{failing.url}"}}}}
  reply: {{uri: "{failing.url}"}}
"""
    status, body = await call("POST", mesh.url + "/apply", text=docs)
    assert status == 200, body
    assert [ready(i)[0] for i in body["items"]] == ["True"] * len(body["items"]), body
    for path in ("/default/br", "/channels/default/ch", "/sequences/default/seq"):
        assert (await post_binary(mesh.url + path))[0] == 202
    await failing.wait_for(4)  # a retry went through a delay queue
    assert list_names("queues", f"{p}.trigger.") != []
    for item in body["items"]:
        kind, ns, name = key_of_item(item)
        path = {
            "Broker": BROKERS.format(ns=ns) + f"/{name}",
            "Trigger": TRIGGERS.format(ns=ns) + f"/{name}",
            "Namespace": f"/api/v1/namespaces/{name}",
            "Channel": f"/apis/messaging.knative.dev/v1/namespaces/{ns}/channels/{name}",
            "Subscription": f"/apis/messaging.knative.dev/v1/namespaces/{ns}/subscriptions/{name}",
            "Sequence": f"/apis/flows.knative.dev/v1/namespaces/{ns}/sequences/{name}",
            "Parallel": f"/apis/flows.knative.dev/v1/namespaces/{ns}/parallels/{name}",
        }[kind]
        assert (await call("DELETE", mesh.url + path))[0] == 200
    infrastructure = {f"{p}.delay", f"{p}.parked", f"{p}.store"}

    def leftovers() -> list[str]:
        names = list_names("queues", p + ".") + list_names("exchanges", p + ".")
        return [
            n
            for n in names
            if n not in infrastructure and not (n.startswith(f"{p}.delay.") and n.endswith("ms"))
        ]

    assert leftovers() == []
    assert f"{p}.store" in list_names("queues", p + ".")


def key_of_item(item: dict) -> tuple[str, str, str]:
    return item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"]
