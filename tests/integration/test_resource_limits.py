"""Security (issue 11, items 9, 10, 12): what senders and writers can make rabbitmesh hold —
names RabbitMQ cannot take, EventTypes created for every junk type, metric labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import BROKERS, TRIGGERS, broker, call, ready, trigger
from tests.support.mesh import MeshProcess, write_manifests

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
        "Subscription": longest_name_allowed(prefix, "subscription", ":reply") + 1,
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
