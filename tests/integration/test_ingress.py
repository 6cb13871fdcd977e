"""Every ingress status code of CONTRACT.md §3, over real HTTP to a real RabbitMQ."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.support.events import binary_headers, post, post_binary, post_structured
from tests.support.mesh import InProcessMesh, write_manifests
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BROKER = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: br}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: all}
    spec:
      broker: br
      subscriber: {uri: "SINK"}
    """


@pytest.fixture
async def mesh(start_mesh, make_sink):
    sink = await make_sink()
    m = await start_mesh(BROKER.replace("SINK", sink.url), max_event_bytes=64 * 1024)
    m.sink = sink
    return m


async def test_202_binary_and_structured_and_batch(mesh):
    url = mesh.url + "/default/br"
    assert (await post_binary(url, id_="bin"))[0] == 202
    status, _ = await post_structured(
        url, {"specversion": "1.0", "id": "st", "source": "s", "type": "t", "data": "x"}
    )
    assert status == 202
    batch = [{"specversion": "1.0", "id": f"b{i}", "source": "s", "type": "t"} for i in range(3)]
    status, _, _ = await post(
        url,
        headers={"content-type": "application/cloudevents-batch+json"},
        body=orjson.dumps(batch),
    )
    assert status == 202
    await mesh.sink.wait_for(5)
    assert sorted(mesh.sink.ids()) == ["b0", "b1", "b2", "bin", "st"]


async def test_spec_version_03_is_accepted(mesh):
    url = mesh.url + "/default/br"
    status, _ = await post_structured(
        url,
        {"specversion": "0.3", "id": "v03", "source": "s", "type": "t", "schemaurl": "http://x/s"},
    )
    assert status == 202
    (got,) = await mesh.sink.wait_for(1)
    assert got.headers["ce-specversion"] == "0.3"
    assert got.headers["ce-schemaurl"] == "http://x/s"


@pytest.mark.parametrize(
    ("headers", "body", "needle"),
    [
        ({"content-type": "application/json"}, b"{}", "specversion"),
        ({**binary_headers(), "ce-id": ""}, b"{}", "id"),
        ({k: v for k, v in binary_headers().items() if k != "ce-source"}, b"{}", "source"),
        ({**binary_headers(), "ce-specversion": "2.0"}, b"{}", "specversion"),
        ({**binary_headers(), "ce-time": "yesterday"}, b"{}", "time"),
        ({**binary_headers(), "ce-Bad_Name": "x"}, b"{}", "bad_name"),
        ({**binary_headers(), "ce-subject": "%G1"}, b"{}", "ce-subject"),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "JSON"),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion":"1.0","id":"1","source":"s"}',
            "type",
        ),
        ({**binary_headers(), "ce-knativebrokerttl": "1"}, b"{}", "knativebrokerttl"),
        ({**binary_headers(), "ce-knativebrokerttl": "1_0"}, b"{}", "knativebrokerttl"),
        ({**binary_headers(), "ce-knativebrokerttl": "3000000000"}, b"{}", "knativebrokerttl"),
    ],
)
async def test_400_names_the_problem(mesh, headers, body, needle):
    status, _, rbody = await post(mesh.url + "/default/br", headers=headers, body=body)
    assert status == 400, rbody
    message = orjson.loads(rbody)["error"]
    assert needle.lower() in message.lower(), message


async def test_404_unknown_broker(mesh):
    status, _, body = await post(mesh.url + "/default/nope", headers=binary_headers(), body=b"{}")
    assert status == 404
    assert "nope" in orjson.loads(body)["error"]
    status, _, _ = await post(mesh.url + "/other-ns/br", headers=binary_headers(), body=b"{}")
    assert status == 404


async def test_405_and_options(mesh):
    status, headers, _ = await post(mesh.url + "/default/br", method="GET")
    assert status == 405 and headers["Allow"] == "POST, OPTIONS"
    status, headers, _ = await post(mesh.url + "/default/br", method="PUT")
    assert status == 405
    status, headers, _ = await post(mesh.url + "/default/br", method="OPTIONS")
    assert status == 200 and headers["Allow"] == "POST, OPTIONS"


async def test_413_body_too_large(mesh):
    status, _, body = await post(
        mesh.url + "/default/br", headers=binary_headers(), body=b"x" * (64 * 1024 + 1)
    )
    assert status == 413
    assert "65536" in orjson.loads(body)["error"]
    # exactly at the limit is fine
    status, _, _ = await post(
        mesh.url + "/default/br", headers=binary_headers(), body=b"x" * (64 * 1024)
    )
    assert status == 202


async def test_health_and_readiness(mesh):
    assert (await post(mesh.url + "/healthz", method="GET"))[0] == 200
    assert (await post(mesh.url + "/readyz", method="GET"))[0] == 200
    status, headers, body = await post(mesh.url + "/metrics", method="GET")
    assert status == 200 and b"event_count" in body


async def test_503_while_rabbitmq_is_unreachable_then_recovers(tmp_path, prefix, make_sink):
    sink = await make_sink()
    proxy = await TcpProxy().start()
    write_manifests(tmp_path / "c", BROKER.replace("SINK", sink.url))
    mesh = await InProcessMesh(tmp_path / "c", prefix, amqp_url=proxy.url()).start()
    try:
        url = mesh.url + "/default/br"
        assert (await post_binary(url, id_="before"))[0] == 202
        proxy.cut()
        await eventually(lambda: not mesh.server.publisher.connected, what="disconnect seen")
        status, headers, body = await post(url, headers=binary_headers(id_="during"), body=b"{}")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert "RabbitMQ" in orjson.loads(body)["error"]
        assert (await post(mesh.url + "/readyz", method="GET"))[0] == 503
        proxy.restore()

        async def accepted() -> bool:
            return (await post_binary(url, id_="after"))[0] == 202

        await eventually(accepted, timeout=20, interval=0.2, what="202 after reconnect")
        await eventually(
            lambda: {"before", "after"} <= set(sink.ids()),
            timeout=20,
            what="deliveries resume after reconnect",
        )
        assert "during" not in sink.ids()
    finally:
        await mesh.stop()
        await proxy.stop()


async def test_503_before_resources_are_loaded(tmp_path, prefix):
    proxy = await TcpProxy().start()
    proxy.cut()  # RabbitMQ unreachable from the start: not a crash, just not ready
    write_manifests(tmp_path / "c", BROKER.replace("SINK", "http://127.0.0.1:1/"))
    mesh = InProcessMesh(tmp_path / "c", prefix, amqp_url=proxy.url())
    await mesh.start(ready=False)
    try:

        async def answered() -> int:
            try:
                return (await post(mesh.url + "/default/br", headers=binary_headers(), body=b"{}"))[
                    0
                ]
            except OSError:
                return 0

        assert await eventually(answered, what="HTTP up") == 503
        assert (await post(mesh.url + "/healthz", method="GET"))[0] == 200
        assert (await post(mesh.url + "/readyz", method="GET"))[0] == 503
        proxy.restore()
        await eventually(lambda: mesh.server.reconciled, timeout=30, what="ready after connect")
    finally:
        await mesh.stop()
        await proxy.stop()


async def test_limits_batch_length_inflight_and_slow_bodies(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        BROKER.replace("SINK", sink.url),
        max_batch_events=3,
        max_inflight_publishes=2,
        request_timeout=0.5,
    )
    url = mesh.url + "/default/br"
    batch = [{"specversion": "1.0", "id": f"b{i}", "source": "s", "type": "t"} for i in range(4)]
    status, _, body = await post(
        url,
        headers={"content-type": "application/cloudevents-batch+json"},
        body=orjson.dumps(batch),
    )
    assert status == 413 and "exceeds the limit of 3 events" in orjson.loads(body)["error"]
    status, headers, body = await post(
        url,
        headers={"content-type": "application/cloudevents-batch+json"},
        body=orjson.dumps(batch[:3]),
    )
    assert status == 503 and headers["Retry-After"]
    assert "limit 2" in orjson.loads(body)["error"]
    assert (await post_binary(url))[0] == 202  # under the limit again

    # A client that sends half its body and stalls gets 408 instead of holding a handler.
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port)
    writer.write(
        b"POST /default/br HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: 1\r\n"
        b'ce-source: s\r\nce-type: t\r\nContent-Length: 100\r\n\r\n{"half":'
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    writer.close()


async def test_too_many_headers_is_a_clear_4xx(mesh):
    headers = {**binary_headers(), **{f"x-h{i}": "v" for i in range(200)}}
    status, _, _ = await post(mesh.url + "/default/br", headers=headers, body=b"{}")
    assert status in (400, 431)


async def test_event_no_trigger_wants_is_accepted_and_counted(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(
        BROKER.replace("SINK", sink.url).replace(
            "subscriber:", "filter: {attributes: {type: only.this}}\n      subscriber:"
        )
    )
    status, _ = await post_binary(mesh.url + "/default/br", "nobody.wants.this")
    assert status == 202
    _, _, metrics = await post(mesh.url + "/metrics", method="GET")
    exchange = mesh.settings.topology_prefix + ".broker.default.br"
    label = 'exchange="' + exchange + '"'
    (line,) = [
        ln
        for ln in metrics.decode().splitlines()
        if ln.startswith("event_dropped_no_subscriber_total{") and label in ln
    ]
    assert line.endswith(" 1.0"), line
