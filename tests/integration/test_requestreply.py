"""RequestReply (eventing.knative.dev/v1alpha1): a POST waits for the event in the broker
whose reply attribute is its correlation id (docs/requestreply.md). Real broker, real
triggers, real responders, two replicas; forged ids match nothing."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

import orjson
import pytest

from rabbitmesh.metrics import requestreply_total
from tests.support.disruption import disrupt
from tests.support.events import binary_headers, post
from tests.support.rabbit import rabbitmqctl
from tests.support.responders import data
from tests.support.sink import Received, Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def manifests(responder_url: str, timeout: str = "PT10S", extra: str = "") -> str:
    return f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: default}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: responder}}
        spec:
          broker: default
          filter: {{attributes: {{type: request.made}}}}
          subscriber: {{uri: "{responder_url}"}}
        ---
        apiVersion: eventing.knative.dev/v1alpha1
        kind: RequestReply
        metadata: {{name: rr}}
        spec:
          brokerRef: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
          timeout: {timeout}
          {extra}
        ---
        """


def reply_to(r: Received, replyid: str | None = None, attr: str = "replyid") -> Reply:
    """The responder's answer: a new event carrying the request's correlation id."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": uuid.uuid4().hex,
        "ce-type": "request.answered",
        "ce-source": "responder",
        f"ce-{attr}": replyid if replyid is not None else r.headers["ce-correlationid"],
        "content-type": "application/json",
    }
    return Reply(200, headers, orjson.dumps({"answer": data(r).get("q", 0) * 2}))


async def ask(url: str, q: int = 21, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return await post(
        url + "/requestreplies/default/rr",
        headers={**binary_headers("request.made"), **headers},
        body=orjson.dumps({"q": q}),
    )


async def test_the_reply_is_the_response(start_mesh, make_sink):
    responder = await make_sink(lambda r, _i: reply_to(r))
    mesh = await start_mesh(manifests(responder.url))
    rr = mesh.server.ctx.get("RequestReply", "default", "rr")
    assert rr.status.ready == "True"
    assert rr.status.address.url == mesh.settings.base_url + "/requestreplies/default/rr"
    status, headers, body = await ask(mesh.url)
    assert status == 200, body
    assert headers["ce-type"] == "request.answered" and orjson.loads(body) == {"answer": 42}
    (req,) = responder.received
    # the id: nonce:replica:mac, and the reply carries it back
    assert req.headers["ce-correlationid"].count(":") == 2
    assert headers["ce-replyid"] == req.headers["ce-correlationid"]


async def test_no_reply_is_504_and_a_forged_id_matches_nothing(start_mesh, make_sink):
    """The responder answers with the id altered (one character of the signature), with an id
    of the right shape but a signature of its own, and with the nonce of another request:
    none of them is a reply, the request times out."""
    forgeries = [
        lambda cid: cid[:-1] + ("A" if cid[-1] != "A" else "B"),
        lambda cid: cid.rsplit(":", 1)[0] + ":" + "A" * 22,
        lambda cid: "x" + cid,
    ]
    responder = await make_sink(
        lambda r, i: reply_to(r, forgeries[i % 3](r.headers["ce-correlationid"]))
    )
    mesh = await start_mesh(manifests(responder.url, timeout="PT1S"))
    for _ in forgeries:
        status, _, body = await ask(mesh.url)
        assert status == 504, body
        assert b"no reply within PT1S" in body
    assert len(responder.received) == 3


async def test_a_request_carrying_the_reply_attribute_is_refused(start_mesh, make_sink):
    responder = await make_sink(lambda r, _i: reply_to(r))
    mesh = await start_mesh(manifests(responder.url))
    status, _, body = await ask(mesh.url, **{"ce-replyid": "a:b:c"})
    assert status == 400 and b"replyid" in body
    assert responder.received == []


async def test_custom_attributes(start_mesh, make_sink):
    def answer(r: Received, _i: int) -> Reply:
        return reply_to(r, r.headers["ce-askid"], attr="answerto")

    responder = await make_sink(answer)
    mesh = await start_mesh(
        manifests(
            responder.url, extra="correlationAttribute: askid\n          replyAttribute: answerto"
        )
    )
    status, headers, _ = await ask(mesh.url)
    assert status == 200 and "ce-answerto" in headers


async def test_two_replicas_the_reply_arrives_through_the_other(start_mesh, make_sink):
    """Replica A holds the request; the responder publishes its answer through replica B's
    broker ingress (not as an HTTP reply): A still answers."""
    meshes: list = []

    def answer(r: Received, _i: int) -> Reply:
        return Reply(202)  # no HTTP reply: the answer goes through replica B

    responder = await make_sink(answer)
    text = manifests(responder.url)
    a = await start_mesh(text)
    b = await start_mesh(text)
    meshes += [a, b]
    request = asyncio.create_task(ask(a.url))
    (req,) = await responder.wait_for(1)
    reply = reply_to(req)
    status, _, _ = await post(b.url + "/default/default", headers=reply.headers, body=reply.body)
    assert status == 202
    status, headers, body = await asyncio.wait_for(request, 10)
    assert status == 200, body
    assert headers["ce-replyid"] == req.headers["ce-correlationid"]


async def test_many_concurrent_requests(start_mesh, make_sink):
    responder = await make_sink(lambda r, _i: reply_to(r))
    mesh = await start_mesh(manifests(responder.url, timeout="PT60S"))
    results = await asyncio.gather(*(ask(mesh.url, q=i) for i in range(200)))
    assert [s for s, _, _ in results] == [200] * 200
    assert sorted(orjson.loads(b)["answer"] for _, _, b in results) == [2 * i for i in range(200)]


async def test_broker_tokens_guard_the_requestreply_too(start_mesh, make_sink):
    responder = await make_sink(lambda r, _i: reply_to(r))
    text = (
        manifests(responder.url).replace(
            "metadata: {name: default}",
            "metadata: {name: default, annotations: {rabbitmesh.dev/ingress-token-secret: tok}}",
            1,
        )
        + """
        apiVersion: v1
        kind: Secret
        metadata: {name: tok}
        stringData: {token: s3cret}
        ---
        """
    )
    mesh = await start_mesh(text)
    status, _, _ = await ask(mesh.url)
    assert status == 401 and responder.received == []
    status, _, _ = await ask(mesh.url, Authorization="Bearer s3cret")
    assert status == 200


@contextlib.contextmanager
def memory_alarm():
    """A memory alarm on the test node (it blocks every publisher), always cleared."""
    value = rabbitmqctl("-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    previous = value if re.fullmatch(r"[0-9.]+", value) else "0.4"
    command = "set_vm_memory_high_watermark"
    disruption = disrupt([command, "0.0001"], [command, previous])
    try:
        yield disruption.undo
    finally:
        disruption.undo()


def metric(ns: str, name: str, result: str) -> float:
    return requestreply_total.labels(ns, name, result)._value.get()


@pytest.mark.disruptive
async def test_spec_delivery_retries_the_publish_and_dead_letters_it(start_mesh, make_sink):
    """RabbitMQ blocks publishers (a memory alarm). `rr` (retry 1) dead-letters the request,
    with its correlation id and the error attributes, and answers 503; `patient` (many
    retries) gets its request in once the alarm clears, and its reply."""
    responder = await make_sink(lambda r, _i: reply_to(r))
    dls = await make_sink()
    delivery = f"delivery: {{retry: 1, backoffDelay: PT0.1S, deadLetterSink: {{uri: '{dls.url}'}}}}"
    text = (
        manifests(responder.url, extra=delivery)
        + """
        apiVersion: eventing.knative.dev/v1alpha1
        kind: RequestReply
        metadata: {name: patient}
        spec:
          brokerRef: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
          timeout: PT60S
          delivery: {retry: 200, backoffDelay: PT0.1S, backoffPolicy: linear}
        """
    )
    mesh = await start_mesh(text, publish_timeout=2.0)
    rr = mesh.server.ctx.get("RequestReply", "default", "rr")
    assert rr.status.model_extra["deadLetterSinkUri"] == dls.url
    with memory_alarm() as clear:
        # RabbitMQ says connection.blocked once the connection publishes: a probe does.
        status, _, _ = await post(
            mesh.url + "/default/default", headers=binary_headers("probe"), body=b"{}"
        )
        assert status == 503
        await eventually(lambda: mesh.server.publisher.blocked, timeout=20, what="blocked")
        status, _, body = await ask(mesh.url)
        assert status == 503 and b"dead-letter sink" in body, body
        (dead,) = await dls.wait_for(1)
        assert dead.headers["ce-type"] == "request.made"
        assert dead.headers["ce-correlationid"].count(":") == 2
        assert dead.headers["ce-knativeerrorcode"] == "503"
        assert dead.headers["ce-knativeerrordest"] == mesh.settings.base_url + "/default/default"
        assert metric("default", "rr", "publish_retried") >= 1
        before = metric("default", "patient", "publish_retried")
        request = asyncio.create_task(
            post(
                mesh.url + "/requestreplies/default/patient",
                headers=binary_headers("request.made"),
                body=orjson.dumps({"q": 5}),
            )
        )
        await eventually(
            lambda: metric("default", "patient", "publish_retried") > before,
            timeout=20,
            what="a publish retried",
        )
        clear()
        status, _, body = await asyncio.wait_for(request, 30)
    assert status == 200 and orjson.loads(body) == {"answer": 10}, body
    assert responder.received and len(dls.received) == 1


async def test_slow_bodies_cannot_hold_more_requests_than_the_limit(start_mesh, make_sink):
    """The pending limit was checked before the body was read: 40 requests whose bodies came
    a little late all passed it together and were all held (40 504s with a limit of 5), each
    with its event in memory for the RequestReply's timeout."""
    responder = await make_sink(lambda _r, _i: Reply(200))  # never replies
    mesh = await start_mesh(manifests(responder.url, timeout="PT2S"), requestreply_max_pending=5)
    port = int(mesh.url.rsplit(":", 1)[1])
    body = b'{"q": 1}'

    async def slow_request(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /requestreplies/default/rr HTTP/1.1\r\nHost: localhost\r\n"
            b"ce-id: slow%d\r\nce-specversion: 1.0\r\nce-type: request.made\r\n"
            b"ce-source: attacker\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (i, len(body))
        )
        await writer.drain()
        await asyncio.sleep(0.5)  # the attack: the body comes late (not a synchronisation)
        writer.write(body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        writer.close()
        return status

    statuses = await asyncio.gather(*(slow_request(i) for i in range(40)))
    assert statuses.count(504) <= 5, statuses  # held until the timeout: at most the limit
    assert statuses.count(503) >= 35, statuses  # the rest refused at once
