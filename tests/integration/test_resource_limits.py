"""Security (issue 11, items 9, 10, 12): what senders and writers can make rabbitmesh hold —
names RabbitMQ cannot take, EventTypes created for every junk type, metric labels."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import BROKERS, EVENTTYPES, TRIGGERS, broker, call, ready, trigger
from tests.support.events import post
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NS = "default"
#: What RabbitMQ takes for a queue name, and the AMQP client (pamqp) for an exchange name.
QUEUE, EXCHANGE = 255, 127


def longest_name_allowed(prefix: str, kind_segment: str, suffix: str, limit: int = QUEUE) -> int:
    """How long a name can be when it becomes `{prefix}.{kind}.default.{name}{suffix}`."""
    return limit - len(f"{prefix}.{kind_segment}.{NS}.{suffix}")


def long_name(n: int) -> str:
    return "n" * n


# --- item 12: names that become RabbitMQ names --------------------------------------------------


async def test_names_too_long_for_rabbitmq_are_refused_at_write_time(start_mesh, make_sink, prefix):
    # A Trigger named with 250 characters used to be accepted (201), then stayed
    # ReconcileFailed for ever: `{prefix}.trigger.default.{name}:dlq` is over 255 bytes.
    sink = await make_sink()
    mesh = await start_mesh("")
    assert (await call("POST", mesh.url + BROKERS.format(ns=NS), broker("br")))[0] == 201
    limit = longest_name_allowed(prefix, "trigger", ":dlq")
    status, body = await call(
        "POST", mesh.url + TRIGGERS.format(ns=NS), trigger(long_name(250), "br", sink.url)
    )
    assert status == 422, body
    assert "metadata.name" in body["error"] and f"at most {limit} characters" in body["error"]
    assert body["details"][0]["field"] == "metadata.name"
    status, body = await call(
        "POST", mesh.url + TRIGGERS.format(ns=NS), trigger(long_name(limit + 1), "br", sink.url)
    )
    assert status == 422, body
    # The longest name allowed really works: RabbitMQ takes every name made from it.
    status, body = await call(
        "POST", mesh.url + TRIGGERS.format(ns=NS), trigger(long_name(limit), "br", sink.url)
    )
    assert status == 201 and ready(body)[0] == "True", body

    # Every kind whose name becomes a RabbitMQ name, through /apply.
    too_long = {
        "Broker": longest_name_allowed(prefix, "broker", "", EXCHANGE) + 1,
        "Channel": longest_name_allowed(prefix, "channel", "", EXCHANGE) + 1,
        "InMemoryChannel": longest_name_allowed(prefix, "channel", "", EXCHANGE) + 1,
        # Its `:reply` queue's `:dlq` (or `:dls`): the longest queue a subscription makes.
        "Subscription": longest_name_allowed(prefix, "subscription", ":reply:dlq") + 1,
        # The exchange of the last step or branch: `{name}-kn-sequence-{i}`, -kn-parallel-{i}.
        "Sequence": longest_name_allowed(prefix, "sequence", "-kn-sequence-0", EXCHANGE) + 1,
        "Parallel": longest_name_allowed(prefix, "parallel", "-kn-parallel-0", EXCHANGE) + 1,
    }
    specs = {
        "Broker": ("eventing.knative.dev/v1", {}),
        "Channel": ("messaging.knative.dev/v1", {}),
        "InMemoryChannel": ("messaging.knative.dev/v1", {}),
        "Subscription": (
            "messaging.knative.dev/v1",
            {
                "channel": {
                    "apiVersion": "messaging.knative.dev/v1",
                    "kind": "Channel",
                    "name": "c",
                },
                "subscriber": {"uri": sink.url},
            },
        ),
        "Sequence": ("flows.knative.dev/v1", {"steps": [{"uri": sink.url}]}),
        "Parallel": ("flows.knative.dev/v1", {"branches": [{"subscriber": {"uri": sink.url}}]}),
    }
    for kind, length in too_long.items():
        api_version, spec = specs[kind]
        doc = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": long_name(length), "namespace": NS},
            "spec": spec,
        }
        status, body = await call("POST", mesh.url + "/apply", doc)
        assert status == 422, (kind, body)
        assert f"metadata.name: too long: at most {length - 1} characters" in body["error"], (
            kind,
            body,
        )
        doc["metadata"]["name"] = long_name(length - 1)
        status, body = await call("POST", mesh.url + "/apply", doc)
        assert status == 200, (kind, body)
    for res in mesh.server.ctx.resources.values():
        cond = next((c for c in res.status.conditions if c.type == "Ready"), None)
        assert cond is None or cond.reason != "ReconcileFailed", (res.key, cond)


async def test_a_config_dir_with_a_name_too_long_stops_rabbitmesh_with_a_clear_error(
    tmp_path: Path, prefix
):
    write_manifests(
        tmp_path / "config",
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: {long_name(250)}}}
        spec: {{broker: default, subscriber: {{uri: "http://127.0.0.1:9/"}}}}
        """,
    )
    mesh = MeshProcess(tmp_path / "config", prefix)
    try:
        with pytest.raises(AssertionError, match="exited"):
            await mesh.start(timeout=30)
        assert await mesh.wait() != 0
        out = mesh.output()
        limit = longest_name_allowed(prefix, "trigger", ":dlq")
        assert "manifests.yaml" in out and "metadata.name: too long" in out, out
        assert f"at most {limit} characters" in out, out
        assert "Traceback" not in out, out
    finally:
        await mesh.stop()


# --- item 9: EventTypes auto-created for whatever senders make up -------------------------------


async def flood(url: str, types: list[str]) -> None:
    """One batched request with an event of each type, as an anonymous sender sends it."""
    batch = [
        {"specversion": "1.0", "id": f"e{i}", "source": "/junk", "type": t}
        for i, t in enumerate(types)
    ]
    status, _, body = await post(
        url,
        headers={"content-type": "application/cloudevents-batch+json"},
        body=orjson.dumps(batch),
    )
    assert status == 202, body


async def metric(mesh, metric_name: str, **labels: str) -> float:
    """A sample of rabbitmesh's /metrics (0 when absent)."""
    status, _, body = await post(mesh.url + "/metrics", method="GET")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name in (metric_name, f"{metric_name}_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


async def auto_event_types(mesh, broker_name: str) -> list[dict]:
    _, listed = await call("GET", mesh.url + EVENTTYPES.format(ns=NS))
    return [et for et in listed["items"] if et["spec"]["reference"]["name"] == broker_name]


BROKER = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: flooded}\n"


async def test_auto_created_event_types_stop_at_the_per_broker_limit(start_mesh):
    # 5,000 EventTypes from 5 anonymous requests used to be stored (and carried in every
    # store snapshot); now a broker gets at most its limit, and the refusals are counted.
    mesh = await start_mesh(
        BROKER,
        eventtype_auto_create=True,
        eventtype_auto_create_max_per_broker=5,
        eventtype_auto_create_per_minute=1000,
    )
    labels = {"kind": "Broker", "namespace": NS, "name": "flooded", "reason": "limit"}
    before = await metric(mesh, "eventtype_auto_create_refused", **labels)
    await flood(mesh.url + "/default/flooded", [f"junk.{i}" for i in range(50)])

    async def refused() -> float:
        return await metric(mesh, "eventtype_auto_create_refused", **labels) - before

    assert await eventually(lambda: _at_least(refused(), 45), what="45 refusals") == 45
    await eventually(lambda: registered(mesh, 5), what="5 EventTypes listed")
    # Seen again, still refused: the limit holds over time, not per request.
    await flood(mesh.url + "/default/flooded", [f"more.{i}" for i in range(10)])
    await eventually(lambda: _at_least(refused(), 55), what="55 refusals")
    assert await registered(mesh, 5)


async def test_auto_created_event_types_are_rate_limited_per_broker(start_mesh):
    mesh = await start_mesh(BROKER, eventtype_auto_create=True, eventtype_auto_create_per_minute=3)
    labels = {"kind": "Broker", "namespace": NS, "name": "flooded", "reason": "rate"}
    before = await metric(mesh, "eventtype_auto_create_refused", **labels)
    await flood(mesh.url + "/default/flooded", [f"burst.{i}" for i in range(20)])

    async def refused() -> float:
        return await metric(mesh, "eventtype_auto_create_refused", **labels) - before

    assert await eventually(lambda: _at_least(refused(), 17), what="17 refusals") == 17
    await eventually(lambda: registered(mesh, 3), what="3 EventTypes listed")


async def registered(mesh, n: int) -> bool:
    """The broker has exactly `n` EventTypes, once the control plane reconciled them (the
    limit counts what the store holds: never more than `n` at any time)."""
    found = len(await auto_event_types(mesh, "flooded"))
    assert found <= n, found
    return found == n


async def _at_least(value, n: float) -> float | None:
    v = await value
    return v if v >= n else None


# --- item 10: metric labels senders cannot fill ---------------------------------------------------


async def test_junk_types_cannot_push_real_types_out_of_the_metric_labels(
    tmp_path: Path, prefix, make_sink
):
    # After 210 junk types, real types used to be counted as `other` for the life of the
    # process: the first 200 types seen got labels. Now configuration names the labels.
    sink = await make_sink()
    write_manifests(
        tmp_path / "config",
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: metered}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: real}}
        spec:
          broker: metered
          filter: {{attributes: {{type: com.example.real}}}}
          subscriber: {{uri: "{sink.url}"}}
        """,
    )
    mesh = await MeshProcess(tmp_path / "config", prefix).start()
    try:
        url = mesh.url + "/default/metered"
        await flood(url, [f"junk.{i}" for i in range(300)])  # the attacker comes first
        await flood(url, ["com.example.real"])
        await sink.wait_for(1, timeout=20)

        def count(metric_name: str, event_type: str, **labels: str):
            return metric(mesh, metric_name, event_type=event_type, **labels)

        ingress = {"kind": "Broker", "namespace": NS, "name": "metered"}
        assert await count("event_count", "com.example.real", **ingress) == 1
        assert await count("event_count", "other", **ingress) == 300
        await eventually(  # counted just after the sink answered
            lambda: _at_least(count("dispatch_event_count", "com.example.real"), 1),
            what="the delivery counted under its type",
        )
        status, _, body = await post(mesh.url + "/metrics", method="GET")
        assert b'event_type="junk.' not in body

        # Hot reload: types named by a new Trigger's filter (here CESQL) or a new EventType
        # get their own label from then on.
        later = trigger("later", "metered", sink.url)
        later["spec"]["filters"] = [{"cesql": "type = 'com.example.later'"}]
        assert (await call("POST", mesh.url + TRIGGERS.format(ns=NS), later))[0] == 201
        registered = {
            "apiVersion": "eventing.knative.dev/v1beta2",
            "kind": "EventType",
            "metadata": {"name": "registered", "namespace": NS},
            "spec": {"type": "com.example.registered", "broker": "metered"},
        }
        assert (await call("POST", mesh.url + "/apply", registered))[0] == 200
        await flood(url, ["com.example.later", "com.example.registered", "junk.again"])
        assert await count("event_count", "com.example.later", **ingress) == 1
        assert await count("event_count", "com.example.registered", **ingress) == 1
        assert await count("event_count", "other", **ingress) == 301
    finally:
        await mesh.stop()
