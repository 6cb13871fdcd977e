"""The pure parts of the source runtimes: schedules, events, environments, command lines."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from rabbitmesh.amqp.names import Names
from rabbitmesh.cron import Schedule, ScheduleError, croniter_expression
from rabbitmesh.resources.core import Secret
from rabbitmesh.resources.loader import ManifestError, load_text
from rabbitmesh.sources import apiserver, container, gitlab, ping
from rabbitmesh.sources.manager import MAX_QUEUE_NAME, source_queue
from rabbitmesh.sources.secrets import NotReady, Redactor
from rabbitmesh.sources.sender import Retry
from rabbitmesh.sources.sinkbinding import NotBound, binding_env, env_of
from rabbitmesh.timestamps import rfc3339


def load(text: str):
    (res,) = load_text(textwrap.dedent(text), "test.yaml")
    return res


# --- schedules ------------------------------------------------------------------------------


def test_six_fields_put_seconds_first_and_croniter_gets_them_last():
    assert croniter_expression("*/3 * * * * *") == "* * * * * */3"
    assert croniter_expression("0 30 9 * * 1-5") == "30 9 * * 1-5 0"
    assert croniter_expression(" */5 * * * * ") == "*/5 * * * *"
    assert croniter_expression("@daily") == "@daily"
    for bad in ("@every 1s", "* * *", "x * * * *"):
        with pytest.raises(ScheduleError):
            croniter_expression(bad)


def test_ticks_every_three_seconds_and_in_a_time_zone_across_dst():
    start = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    ticks = list(islice(Schedule("*/3 * * * * *").ticks_after(start), 3))
    assert [t.second for t in ticks] == [3, 6, 9]
    # 9:00 in Paris stays 9:00 local when the clocks change (31 March 2024).
    paris = Schedule("0 9 * * *", "Europe/Paris")
    before, after = islice(paris.ticks_after(datetime(2024, 3, 30, 6, tzinfo=UTC)), 2)
    assert (before.hour, after.hour) == (9, 9)
    assert before.astimezone(UTC).hour == 8 and after.astimezone(UTC).hour == 7
    with pytest.raises(ScheduleError, match="unknown time zone"):
        Schedule("* * * * *", "Europe/Atlantis")


def test_a_new_leader_resumes_after_the_last_recorded_tick_within_the_catch_up_window():
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert ping.first_start(None, now) == now  # nothing recorded: from now on
    recent = now - timedelta(seconds=3)
    assert ping.first_start(recent, now) == recent  # the missed ticks since are fired
    old = now - timedelta(hours=1)
    assert ping.first_start(old, now) == now - timedelta(seconds=ping.CATCH_UP_SECONDS)


def test_ping_event_of_a_tick():
    src = load(
        """
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {name: p, namespace: team}
        spec: {sink: {uri: "http://x/"}, data: hi, contentType: text/plain,
               ceOverrides: {extensions: {env: prod}}}
        """
    )
    tick = datetime(2024, 5, 2, 10, 11, 12, tzinfo=UTC)
    a, b = ping.make_event(src, tick), ping.make_event(src, tick)
    assert a.id != b.id
    assert a.attributes == {
        "specversion": "1.0",
        "id": a.id,
        "type": "dev.knative.sources.ping",
        "source": "/apis/v1/namespaces/team/pingsources/p",
        "time": "2024-05-02T10:11:12Z",
        "datacontenttype": "text/plain",
        "env": "prod",
    }
    assert a.data == b"hi"


def test_rfc3339_and_retry_backoff():
    assert rfc3339(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00Z"
    assert rfc3339(datetime(2024, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)) == "2024-01-01T00:00:00.005000Z"
    r = Retry(retries=5, backoff=0.5, max_backoff=3.0)
    assert [r.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert r.delay(1, retry_after=2.0) == 2.0 and r.delay(1, retry_after=60.0) == 3.0


def test_queue_names_stay_within_amqps_limit():
    names = Names("rm")
    assert (
        source_queue(names, "PingSource", "ns", "p", "lease") == "rm.source.pingsource.ns.p:lease"
    )
    long = source_queue(names, "PingSource", "ns", "x" * 253, "state")
    assert len(long.encode()) <= MAX_QUEUE_NAME and long.endswith(":state")
    assert long != source_queue(names, "PingSource", "ns", "x" * 252 + "y", "state")


# --- ApiServerSource events -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural"),
    [("Pod", "pods"), ("Ingress", "ingresses"), ("NetworkPolicy", "networkpolicies"),
     ("Endpoints", "endpoints"), ("ConfigMap", "configmaps")],
)  # fmt: skip
def test_plurals_as_kubernetes_guesses_them(kind, plural):
    assert apiserver.guess_plural(kind) == plural


def test_self_links_as_knative_builds_them():
    assert apiserver.self_link("v1", "Pod", "ns", "p") == "/apis/v1/namespaces/ns/pods/p"
    assert (
        apiserver.self_link("apps/v1", "Deployment", "ns", "d")
        == "/apis/apps/v1/namespaces/ns/deployments/d"
    )
    assert (
        apiserver.self_link("serving.knative.dev", "Service", "ns", "s")
        == "/apis/serving.knative.dev/versionUnknown/namespaces/ns/services/s"
    )


def test_api_server_events_in_both_modes():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7"},
        "spec": {"b": 1, "a": 2},
    }
    ref = apiserver.make_event("https://k8s:6443", "add", pod, True, {"team": "x"})
    assert ref.attributes | {"id": "", "time": ""} == {
        "specversion": "1.0",
        "id": "",
        "time": "",
        "type": "dev.knative.apiserver.ref.add",
        "source": "https://k8s:6443",
        "subject": "/apis/v1/namespaces/ns/pods/p",
        "datacontenttype": "application/json",
        "kind": "Pod",
        "name": "p",
        "namespace": "ns",
        "team": "x",
    }
    # Go's ObjectReference field order, empty fields left out.
    assert ref.data == b'{"kind":"Pod","namespace":"ns","name":"p","apiVersion":"v1"}'
    res = apiserver.make_event("https://k8s:6443", "delete", pod, False, {})
    assert res.type == "dev.knative.apiserver.resource.delete"
    assert json.loads(res.data) == pod
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    cluster_scoped = apiserver.make_event("h", "update", node, True, {})
    assert "namespace" not in cluster_scoped.attributes
    assert json.loads(cluster_scoped.data) == {"kind": "Node", "name": "n1", "apiVersion": "v1"}


def test_owner_filter_looks_at_the_controller():
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "controller": True}
    owned = {"metadata": {"ownerReferences": [{**rs, "controller": False, "kind": "X"}, rs]}}
    assert apiserver.controlled_by(owned, "apps/v1", "ReplicaSet")
    assert not apiserver.controlled_by(owned, "apps/v1", "Job")
    assert apiserver.controlled_by(owned, "", "ReplicaSet")
    assert not apiserver.controlled_by({"metadata": {}}, "apps/v1", "ReplicaSet")


# --- GitLabSource ---------------------------------------------------------------------------


def test_gitlab_headers_project_urls_and_hook_bodies():
    assert gitlab.event_kind("Merge Request Hook") == "merge_request"
    assert gitlab.event_kind("Confidential Note Hook") == "confidential_note"
    assert gitlab.event_kind("System Hook") is None
    assert gitlab.event_kind("Push") is None
    assert gitlab.split_project_url("https://gitlab.example.com/grp/sub/app.git") == (
        "https://gitlab.example.com",
        "grp/sub/app",
    )
    body = gitlab.hook_body("https://x/h", ["tag_push_events"], "tok", verify=True)
    assert body["tag_push_events"] is True and body["push_events"] is False
    assert body["token"] == "tok" and body["enable_ssl_verification"] is True
    assert "token" not in gitlab.hook_body("https://x/h", ["push_events"], None, verify=False)


# --- ContainerSource and SinkBinding --------------------------------------------------------


SOURCE = """
    apiVersion: sources.knative.dev/v1
    kind: ContainerSource
    metadata: {name: cs, namespace: team}
    spec:
      sink: {uri: "http://sink/"}
      ceOverrides: {extensions: {a: b}}
      template:
        spec:
          containers:
            - name: main
              image: ghcr.io/me/app:1
              command: [/app, --sink, $(K_SINK)]
              args: [--name=$(NAME), $$(NAME), $(UNKNOWN)]
              env:
                - {name: NAME, value: overridden}
                - {name: GREETING, value: "hi $(NAME)"}
                - {name: K_SINK, value: "cannot override"}
                - {name: TOKEN, valueFrom: {secretKeyRef: {name: s, key: token}}}
"""


def secrets(ns: str, name: str) -> Secret | None:
    if (ns, name) != ("team", "s"):
        return None
    return Secret.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s"},
            "stringData": {"token": "t0k"},
        }
    )


def test_container_environment_order_and_expansion():
    src = load(SOURCE)
    (c,) = src.containers()
    env = container.container_env(src, c, "http://sink/", secrets)
    assert env == {
        "NAME": "overridden",  # the container's env may set NAME
        "NAMESPACE": "team",
        "GREETING": "hi overridden",
        "TOKEN": "t0k",
        "K_SINK": "http://sink/",  # but not K_SINK, which Knative's binding sets last
        "K_CE_OVERRIDES": '{"extensions":{"a":"b"}}',
    }
    (launch,) = container.launches(src, "http://sink/", "process", "", secrets)
    assert launch.argv == (
        "/app", "--sink", "http://sink/", "--name=overridden", "$(NAME)", "$(UNKNOWN)"
    )  # fmt: skip
    assert dict(launch.env) == env
    assert not any(k.startswith("RABBITMESH_") for k in launch.environ())


def test_docker_argv_passes_variables_by_name_and_maps_command_to_entrypoint():
    src = load(SOURCE)
    (launch,) = container.launches(
        src, "http://sink/", "docker", "--network host --cpus 1", secrets
    )
    name = launch.docker_name
    assert name is not None and re.fullmatch(r"rabbitmesh-team-cs-main-[0-9a-f]{12}", name)
    assert launch.argv == (
        "docker", "run", "--rm", f"--name={name}",
        "--label=dev.rabbitmesh.source=team/cs", "--network", "host", "--cpus", "1",
        "--env=NAME", "--env=NAMESPACE", "--env=GREETING", "--env=TOKEN", "--env=K_SINK",
        "--env=K_CE_OVERRIDES",
        "--entrypoint=/app", "--", "ghcr.io/me/app:1", "--sink", "http://sink/",
        "--name=overridden", "$(NAME)", "$(UNKNOWN)",
    )  # fmt: skip
    assert "t0k" not in " ".join(launch.argv)  # secrets stay out of `ps`


def test_what_the_process_runtime_cannot_run():
    src = load(SOURCE.replace("command: [/app, --sink, $(K_SINK)]", ""))
    with pytest.raises(NotReady) as e:
        container.launches(src, "http://sink/", "process", "", secrets)
    assert e.value.reason == "InvalidSpec" and "no command" in e.value.message
    with pytest.raises(NotReady) as e:
        container.launches(load(SOURCE), "http://sink/", "process", "", lambda ns, n: None)
    assert e.value.reason == "SecretNotFound"
    # Knative's heartbeats sample image runs the built-in heartbeats.
    sample = SOURCE.replace(
        "ghcr.io/me/app:1",
        "gcr.io/knative-releases/knative.dev/eventing/cmd/heartbeats@sha256:" + "ab" * 32,
    )
    (launch,) = container.launches(
        load(sample.replace("command: [/app, --sink, $(K_SINK)]", "")),
        "http://s/",
        "process",
        "",
        secrets,
    )
    assert launch.argv[:4] == (sys.executable, "-m", "rabbitmesh", "heartbeats")
    assert container.builtin_command("docker.io/me/heartbeats") is None


def test_sinkbinding_environment_from_the_api_object():
    assert binding_env("http://s/", None, "b", "ns")["K_CE_OVERRIDES"] == ""
    obj = {
        "metadata": {"name": "b", "namespace": "ns"},
        "spec": {"ceOverrides": {"extensions": {"x": "1"}}},
        "status": {"sinkUri": "http://s/"},
    }
    assert env_of(obj) == {
        "K_SINK": "http://s/",
        "K_CE_OVERRIDES": '{"extensions":{"x":"1"}}',
        "NAME": "b",
        "NAMESPACE": "ns",
    }
    unbound = {
        "metadata": {"name": "b"},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NotFound"}]},
    }
    with pytest.raises(NotBound, match="NotFound"):
        env_of(unbound)


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ("61 * * * *", "a value is out of range"),
        ("*/x * * * *", "not a valid schedule"),
        ("* * *", "3 fields"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_schedule_errors_do_not_repeat_the_schedule(schedule, why):
    """The caller names the schedule once ("invalid cron expression '...': <this>")."""
    with pytest.raises(ScheduleError) as e:
        croniter_expression(schedule)
    message = str(e.value)
    assert message.startswith(why), message
    assert schedule not in message and "[" not in message, message
    assert message.count("5 fields") <= 1, message


def test_docker_names_of_different_sources_never_collide():
    # `team-a`/`sync` and `team`/`a-sync` read the same once joined with "-".
    meta = "{name: cs, namespace: team}"
    a = load(SOURCE.replace(meta, "{name: sync, namespace: team-a}"))
    b = load(SOURCE.replace(meta, "{name: a-sync, namespace: team}"))
    (ca,), (cb,) = a.containers(), b.containers()
    assert container.docker_name(a, ca) != container.docker_name(b, cb)


def test_redactor_hides_every_secret_value_as_a_substring():
    redact = Redactor(["t0k", "line one\nline two"])
    assert redact("--token=t0k and t0kt0k") == "--token=<redacted> and <redacted><redacted>"
    assert redact("got: line two") == "got: <redacted>"
    assert Redactor([""])("unchanged") == "unchanged"


def test_the_image_must_be_an_image_reference():
    for bad in ("--privileged", "-v/:/host", "a b", "ko://knative.dev/x", "x:y:z"):
        with pytest.raises(ManifestError) as e:
            load(SOURCE.replace("ghcr.io/me/app:1", f"'{bad}'"))
        assert e.value.field.endswith(".image"), e.value
    for good in (
        "alpine",
        "localhost:5000/a/b:v1.2",
        "docker.io/library/alpine@sha256:" + "a" * 64,
    ):
        load(SOURCE.replace("ghcr.io/me/app:1", good))
