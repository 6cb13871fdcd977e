"""The first hour of a new user: each message names the real cause (issue 22).

Every test provokes the mistake as a user makes it, against a real rabbitmesh (in-process
`Server` or a real `rabbitmesh run` process) and the real CLI, and checks that the answer
names the cause: the misspelt field, the missing Secret, the content type, the path form,
the busy address, the file and line, the server tried.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from tests.integration.test_cli import one_error_line, rabbitmesh
from tests.support.api import BROKERS, call
from tests.support.events import binary_headers, post
from tests.support.mesh import AMQP_URL, free_port, unique_prefix, write_manifests

pytestmark = pytest.mark.integration

#: `subscribr:` misspelt, and so `subscriber` missing: two errors, the first hides the cause.
TWO_MISTAKES = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: tr1}
spec:
  broker: default
  subscribr:
    uri: http://127.0.0.1:9/
"""


def assert_names_both_mistakes(text: str) -> None:
    assert "spec.subscriber: Field required" in text, text
    assert "spec.subscribr: unknown field (did you mean 'subscriber'?)" in text, text
    assert "more)" not in text, text  # nothing summarised away


async def test_every_field_error_is_listed_at_apply_time(start_mesh, tmp_path):
    mesh = await start_mesh("")
    # The admin API's 422: the message and the details name both fields.
    status, body = await call("POST", mesh.url + "/apply", text=TWO_MISTAKES)
    assert status == 422, body
    assert_names_both_mistakes(body["error"])
    details = {d["field"]: d["message"] for d in body["details"]}
    assert details["spec.subscribr"] == "unknown field (did you mean 'subscriber'?)", details
    assert details["spec.subscriber"] == "Field required", details
    # The CLI shows the same, in one line, naming the file.
    path = write_manifests(tmp_path / "m", TWO_MISTAKES, "trigger.yaml")
    line = one_error_line(await rabbitmesh("apply", "-f", str(path), server=mesh.url))
    assert str(path) in line
    assert_names_both_mistakes(line)


async def test_every_field_error_is_listed_at_start_up(tmp_path):
    write_manifests(tmp_path / "config", TWO_MISTAKES, "trigger.yaml")
    run = await rabbitmesh(
        "run",
        RABBITMESH_CONFIG_DIR=str(tmp_path / "config"),
        RABBITMESH_HTTP_PORT="0",
        RABBITMESH_AMQP_URL=AMQP_URL,
        RABBITMESH_TOPOLOGY_PREFIX=unique_prefix(),
    )
    line = one_error_line(run)
    assert "trigger.yaml" in line
    assert_names_both_mistakes(line)


NOT_READY_BROKER = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata:
      name: x
      annotations: {"rabbitmesh.dev/ingress-token-secret": tokens-not-created-yet}
    """


async def test_a_broker_that_is_not_ready_says_so_and_why(start_mesh):
    mesh = await start_mesh(NOT_READY_BROKER)
    status, headers, body = await post(
        mesh.url + "/default/x", headers=binary_headers(), body=b"{}"
    )
    message = orjson.loads(body)["error"]
    assert status == 503, message
    assert headers["Retry-After"]  # retried by senders, as a 5xx is in Knative
    assert "Broker default/x exists but is not Ready" in message
    assert "IngressTokenSecretMissing" in message and "tokens-not-created-yet" in message
    # The same condition the admin API shows.
    _, shown = await call("GET", mesh.url + BROKERS.format(ns="default") + "/x")
    ready = next(c for c in shown["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] in message and ready["message"] in message
    # A broker that does not exist is still 404, and says that.
    status, _, body = await post(mesh.url + "/default/y", headers=binary_headers(), body=b"{}")
    assert status == 404 and "Broker default/y not found" in orjson.loads(body)["error"]


async def test_a_structured_event_sent_as_application_json_gets_the_content_type(start_mesh):
    mesh = await start_mesh("""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: br}
        """)
    event = {"specversion": "1.0", "id": "1", "type": "t", "source": "s", "data": {"a": 1}}
    status, _, body = await post(
        mesh.url + "/default/br",
        headers={"Content-Type": "application/json"},
        body=orjson.dumps(event),
    )
    message = orjson.loads(body)["error"]
    assert status == 400
    assert "no 'ce-specversion' header" in message
    assert "Content-Type: application/cloudevents+json" in message, message
    # A plain JSON body that is not an event gets no such suggestion.
    status, _, body = await post(
        mesh.url + "/default/br", headers={"Content-Type": "application/json"}, body=b'{"a": 1}'
    )
    assert status == 400 and "cloudevents+json" not in orjson.loads(body)["error"]


async def test_unknown_paths_answer_json_naming_the_path_forms(start_mesh):
    mesh = await start_mesh("")
    # The namespace forgotten.
    status, headers, body = await post(mesh.url + "/br1", headers=binary_headers(), body=b"{}")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    answer = orjson.loads(body)
    assert answer["reason"] == "NotFound"
    message = answer["error"]
    assert "POST /br1" in message and "/default/br1" in message
    for form in ("/{namespace}/{broker}", "/channels/{namespace}/{name}"):
        assert form in message, message
    # Any unknown path, any method.
    status, headers, body = await post(mesh.url + "/a/b/c/d", method="GET")
    assert status == 404 and "no such path: GET /a/b/c/d" in orjson.loads(body)["error"]
    # A known path with a method it does not take: JSON 405 with Allow.
    status, headers, body = await post(mesh.url + "/healthz", method="POST")
    assert status == 405 and "GET" in headers["Allow"]
    assert "method POST not allowed on /healthz" in orjson.loads(body)["error"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


async def test_rabbitmesh_run_on_a_busy_port_says_so_in_one_line(busy_port, tmp_path):
    run = await rabbitmesh(
        "run",
        RABBITMESH_CONFIG_DIR=str(tmp_path / "none"),
        RABBITMESH_HTTP_HOST="127.0.0.1",
        RABBITMESH_HTTP_PORT=str(busy_port),
        RABBITMESH_AMQP_URL=AMQP_URL,
        RABBITMESH_TOPOLOGY_PREFIX=unique_prefix(),
    )
    line = one_error_line(run)
    assert f"cannot listen on 127.0.0.1:{busy_port}: address already in use" in line
    assert "RABBITMESH_HTTP_PORT" in line and "--http-port" in line
    assert "Traceback" not in run.out + run.err


@pytest.mark.parametrize("tool", ["event-display", "appender", "filter"])
async def test_a_helper_service_on_a_busy_port_says_so_in_one_line(busy_port, tool):
    extra = ["--expression", "true"] if tool == "filter" else []
    run = await rabbitmesh(tool, *extra, "--host", "127.0.0.1", "--port", str(busy_port))
    line = one_error_line(run)
    assert f"cannot listen on 127.0.0.1:{busy_port}: address already in use" in line
    assert "--port" in line and tool in line


async def test_a_yaml_error_names_the_file_and_line(start_mesh, tmp_path):
    mesh = await start_mesh("")
    config = tmp_path / "config"
    write_manifests(config, "apiVersion: v1\nkind: Secret\n", "good.yaml")
    bad = write_manifests(config, "kind: Broker\nmetadata: {name: b\n  spec: [\n", "bad.yaml")
    line = one_error_line(await rabbitmesh("apply", "-f", str(config), server=mesh.url))
    assert f"{bad}: document 1: invalid YAML at line 3" in line, line
    assert "request body" not in line
    # At start-up too.
    run = await rabbitmesh(
        "run",
        RABBITMESH_CONFIG_DIR=str(config),
        RABBITMESH_HTTP_PORT="0",
        RABBITMESH_TOPOLOGY_PREFIX=unique_prefix(),
    )
    line = one_error_line(run)
    assert f"{bad}: document 1: invalid YAML at line 3" in line, line


async def test_a_bad_cron_schedule_is_named_once(start_mesh):
    mesh = await start_mesh("")
    source = """
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: p}
spec:
  schedule: "61 * * * *"
  sink: {uri: "http://127.0.0.1:9/"}
"""
    status, body = await call("POST", mesh.url + "/apply", text=source)
    message = body["error"]
    assert status == 422 and "spec.schedule: invalid cron expression '61 * * * *'" in message
    assert "out of range" in message
    assert message.count("61 *") == 1, message  # the schedule is said once
    assert message.count("5 fields") == 1, message  # and so is how to write one


async def test_the_cli_follows_rabbitmesh_http_port(start_mesh):
    mesh = await start_mesh("""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: found-through-the-port}
        """)
    # The same environment `rabbitmesh run` got its port from: no --server needed.
    run = await rabbitmesh("broker", "list", RABBITMESH_HTTP_PORT=str(mesh.port))
    assert run.code == 0 and "found-through-the-port" in run.out, run
    # Nothing there: the message names the URL tried, where it came from, and the way out.
    dead = free_port()
    line = one_error_line(await rabbitmesh("broker", "list", RABBITMESH_HTTP_PORT=str(dead)))
    assert f"http://localhost:{dead}, from RABBITMESH_HTTP_PORT (connection refused)" in line
    assert "--server" in line and "RABBITMESH_SERVER" in line
    line = one_error_line(await rabbitmesh("get", "brokers", server=f"http://127.0.0.1:{dead}"))
    assert f"http://127.0.0.1:{dead}, from --server / RABBITMESH_SERVER" in line
    # `send` too.
    line = one_error_line(
        await rabbitmesh(
            "send", "--to", "broker:b", "-t", "t", "-s", "s", RABBITMESH_HTTP_PORT=str(dead)
        )
    )
    assert f"http://localhost:{dead}/default/b" in line and "--server" in line
