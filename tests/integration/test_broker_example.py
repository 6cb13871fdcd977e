"""The seed's broker + trigger example, end to end through a real `rabbitmesh run` process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.events import post
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import MeshProcess, free_port, write_manifests

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def example(tmp_path, prefix, make_sink):
    """config/broker.yaml with its two subscriber ports swapped for free ones."""
    hi, bye = await make_sink(), await make_sink()
    text = (REPO / "config" / "broker.yaml").read_text()
    text = text.replace("127.0.0.1:9001", f"127.0.0.1:{hi.port}")
    text = text.replace("127.0.0.1:9002", f"127.0.0.1:{bye.port}")
    write_manifests(tmp_path / "config", text)
    mesh = await MeshProcess(tmp_path / "config", prefix).start()
    yield mesh, hi, bye
    await mesh.stop()


async def test_structured_event_reaches_only_matching_trigger(example):
    mesh, hi, bye = example
    event = {
        "id": "0",
        "specversion": "1.0",
        "type": "com.hj.hi",
        "source": "curl",
        "data": {"message": "hello,flow"},
    }
    status, _, body = await post(
        mesh.url + "/default/br1",
        headers={"Content-Type": "application/cloudevents+json"},
        body=json.dumps(event),
    )
    assert status == 202, body
    (got,) = await hi.wait_for(1)
    assert got.headers["ce-id"] == "0"
    assert got.headers["ce-type"] == "com.hj.hi"
    assert got.headers["ce-source"] == "curl"
    assert got.headers["ce-specversion"] == "1.0"
    # No datacontenttype in the event: none is invented (JSON is implied), as Knative does.
    assert "content-type" not in got.headers
    assert got.headers["prefer"] == "reply"
    assert got.headers["kn-namespace"] == "default"
    assert "ce-knativearrivaltime" in got.headers
    assert "ce-knativebrokerttl" not in got.headers
    assert json.loads(got.body) == {"message": "hello,flow"}
    # A second event of the other type proves routing (and that tr2 was live all along).
    bye_event = dict(event, id="1", type="com.hj.bye")
    status, _, _ = await post(
        mesh.url + "/default/br1",
        headers={"Content-Type": "application/cloudevents+json"},
        body=json.dumps(bye_event),
    )
    assert status == 202
    (got_bye,) = await bye.wait_for(1)
    assert got_bye.headers["ce-id"] == "1"
    assert hi.ids() == ["0"] and bye.ids() == ["1"]


async def test_binary_event_behaves_the_same(example):
    mesh, hi, bye = example
    status, _, _ = await post(
        mesh.url + "/default/br1",
        headers={
            "Ce-Id": "b1",
            "Ce-Specversion": "1.0",
            "Ce-Type": "com.hj.hi",
            "Ce-Source": "curl",
            "Ce-Myext": "Euro%20%E2%82%AC",
            "Content-Type": "text/plain; charset=utf-8",
        },
        body="hello, binary €".encode(),
    )
    assert status == 202
    (got,) = await hi.wait_for(1)
    assert got.headers["ce-myext"] == "Euro%20%E2%82%AC"
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    assert got.body == "hello, binary €".encode()
    # tr2 must not have received it: send a marker to tr2 and check it is the only one there.
    status, _, _ = await post(
        mesh.url + "/default/br1",
        headers={"Ce-Id": "m", "Ce-Specversion": "1.0", "Ce-Type": "com.hj.bye", "Ce-Source": "t"},
    )
    assert status == 202
    await bye.wait_for(1)
    assert bye.ids() == ["m"]


async def test_invalid_manifest_stops_startup_with_one_line(tmp_path, prefix):
    write_manifests(
        tmp_path / "bad",
        broker_and_trigger("not-a-url", broker="br1", trigger="tr1"),
        "bad.yaml",
    )
    mesh = MeshProcess(tmp_path / "bad", prefix, port=free_port())
    with pytest.raises(AssertionError):
        await mesh.start(timeout=15)
    code = await mesh.wait()
    out = mesh.output().strip().splitlines()
    assert code != 0
    assert len(out) == 1, out
    assert "bad.yaml: document 2 (Trigger tr1): spec.subscriber" in out[0]
    assert "uri must be an absolute http(s) URL" in out[0]


@pytest.mark.parametrize(
    ("var", "value", "expect"),
    [
        ("RABBITMESH_HTTP_PORT", "eighty", "RABBITMESH_HTTP_PORT"),
        ("RABBITMESH_AMQP_URL", "http://x", "RABBITMESH_AMQP_URL: must start with amqp://"),
        ("RABBITMESH_DEFAULT_BACKOFF_DELAY", "1s", "RABBITMESH_DEFAULT_BACKOFF_DELAY"),
    ],
)
async def test_bad_setting_stops_startup_with_one_line(tmp_path, prefix, var, value, expect):
    mesh = MeshProcess(tmp_path, prefix, **{var: value})
    with pytest.raises(AssertionError):
        await mesh.start(timeout=15)
    assert await mesh.wait() != 0
    out = mesh.output().strip().splitlines()
    assert len(out) == 1 and expect in out[0], out
