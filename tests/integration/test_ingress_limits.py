"""Hostile input at ingress (issue 11, items 2, 3, 4 and 7), against a real rabbitmesh and a
real RabbitMQ: nothing a client sends may close the shared publisher connection, crash a
later delivery, be told to retry what can never succeed, or hold the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import statistics
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.events import binary_headers, post, post_binary, post_structured
from tests.support.faults import LoadGenerator
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BROKER = broker_and_trigger("SINK", delivery="{retry: 0}")


@pytest.fixture
async def mesh(start_mesh, make_sink):
    sink = await make_sink()
    m = await start_mesh(BROKER.replace("SINK", sink.url))
    m.sink = sink
    return m


def structured(**attributes: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "s", "type": "t", **attributes}


def error_of(body: bytes) -> str:
    return orjson.loads(body)["error"]


def publisher_link(mesh: Any) -> object:
    """What changes when the publisher's connection to RabbitMQ is closed and re-opened: the
    robust connection object stays, its underlying aiormq connection is replaced."""
    publisher = mesh.server.publisher
    assert publisher.connected
    return publisher.connection.transport


async def post_oversized_attributes(url: str) -> list[tuple[int, str]]:
    """The two shapes of issue 11 item 2: one 200 kB extension (structured), and 24 `ce-`
    headers of 7 kB each (binary; each fits aiohttp's 8190-byte header line)."""
    answers = []
    status, body = await post_structured(url, structured(big="x" * 200_000))
    answers.append((status, error_of(body) if status != 202 else ""))
    headers = {**binary_headers(), **{f"ce-h{i}": "y" * 7_000 for i in range(24)}}
    status, _, body = await post(url, headers=headers, body=b"{}")
    answers.append((status, error_of(body) if status != 202 else ""))
    return answers


async def test_attributes_over_rabbitmqs_frame_limit_get_413_and_the_connection_stays(mesh, caplog):
    caplog.set_level(logging.INFO, logger="rabbitmesh.amqp")
    url = mesh.url + "/default/br"
    link = publisher_link(mesh)
    frame_max = mesh.server.publisher.frame_max
    assert frame_max > 0

    (big, many) = await post_oversized_attributes(url)
    assert big[0] == 413, big
    assert "frame limit" in big[1] and "ce-big" in big[1], big
    assert many[0] == 413, many
    assert "frame limit" in many[1] and "ce-h" in many[1], many

    # A normal event right after: accepted, on the same connection, which never dropped.
    status, ok_id = await post_binary(url)
    assert status == 202
    assert publisher_link(mesh) is link
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    (got,) = await mesh.sink.wait_for(1)
    assert got.ce_id == ok_id


async def test_a_batch_with_one_unpublishable_event_is_refused_as_a_whole(mesh):
    url = mesh.url + "/default/br"
    batch = [structured(id="first"), structured(id="huge", big="x" * 200_000), structured()]
    status, _, body = await post(
        url,
        headers={"content-type": "application/cloudevents-batch+json"},
        body=orjson.dumps(batch),
    )
    assert status == 413 and "frame limit" in error_of(body)
    status, marker = await post_binary(url)
    assert status == 202
    await mesh.sink.wait_for(1)
    assert mesh.sink.ids() == [marker]  # "first" was not published either


ATTACK_ROUNDS = 10


async def test_an_attack_loop_of_oversized_attributes_leaves_legitimate_senders_alone(mesh):
    url = mesh.url + "/default/br"
    link = publisher_link(mesh)
    load = await LoadGenerator(url, rate=100, tag="legit").start()
    try:
        await load.wait_accepted(20, "legitimate events before the attack")
        # A number of rounds, not a time window: a loaded machine ran 4 rounds in 3 s and
        # failed a bound of 5 that said nothing about the legitimate senders.
        for _ in range(ATTACK_ROUNDS):
            answers = await post_oversized_attributes(url)
            assert [s for s, _ in answers] == [413, 413], answers
        await load.wait_accepted(20, "legitimate events after the attack")
    finally:
        await load.stop()
    assert load.count(202) == load.answered(), {
        s: load.count(s) for s in set(load.statuses.values())
    }
    assert publisher_link(mesh) is link
    await eventually(
        lambda: load.accepted() <= set(mesh.sink.ids()), timeout=30, what="every 202 delivered"
    )


@pytest.mark.parametrize(
    ("how", "attribute"),
    [
        ("binary-id", "id"),
        ("structured-id", "id"),
        ("binary-id-multibyte", "id"),
        ("binary-contenttype", "datacontenttype"),
        ("structured-contenttype", "datacontenttype"),
    ],
)
async def test_attributes_longer_than_amqp_allows_get_400_naming_them(mesh, how, attribute):
    url = mesh.url + "/default/br"
    long_ct = "application/json; profile=" + "p" * 300
    if how == "binary-id":
        answer = await post(url, headers=binary_headers(id_="i" * 300), body=b"{}")
    elif how == "binary-id-multibyte":  # 100 characters, 300 bytes (percent-encoded header)
        answer = await post(url, headers=binary_headers(id_="%E2%82%AC" * 100), body=b"{}")
    elif how == "binary-contenttype":
        answer = await post(url, headers={**binary_headers(), "content-type": long_ct}, body=b"{}")
    elif how == "structured-id":
        status, body = await post_structured(url, structured(id="i" * 300))
        answer = (status, {}, body)
    else:
        status, body = await post_structured(url, structured(datacontenttype=long_ct, data={}))
        answer = (status, {}, body)
    status, headers, body = answer
    assert status == 400, (status, body)
    assert "Retry-After" not in headers
    message = error_of(body)
    assert f"'{attribute}'" in message and "255" in message, message


async def test_an_id_of_exactly_255_bytes_is_accepted(mesh):
    status, _ = await post_binary(mesh.url + "/default/br", id_="i" * 255)
    assert status == 202


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (binary_headers(), nested(1000)),  # binary, application/json data
        ({k: v for k, v in binary_headers().items() if k != "content-type"}, nested(1000)),
        ({**binary_headers(), "content-type": "application/vnd.x+json"}, nested(65)),
        (
            {"content-type": "application/cloudevents+json"},
            orjson.dumps(structured(data=0)).replace(b'"data":0', b'"data":' + nested(1000)),
        ),
        (
            {"content-type": "application/cloudevents+json"},
            orjson.dumps(structured(data=0)).replace(b'"data":0', b'"data":' + nested(64)),
        ),
        (
            {"content-type": "application/cloudevents-batch+json"},
            b"[" + orjson.dumps(structured(data=0)).replace(b"0}", nested(1000) + b"}") + b"]",
        ),
    ],
    ids=[
        "binary",
        "binary-no-content-type",
        "binary-plus-json-65",
        "structured",
        "structured-65",
        "batch",
    ],
)
async def test_json_nested_deeper_than_the_limit_gets_400(mesh, headers, body):
    # No auto Content-Type: an absent one means JSON data in binary mode.
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            mesh.url + "/default/br", headers=headers, data=body, skip_auto_headers=["Content-Type"]
        ) as r,
    ):
        status, rbody = r.status, await r.read()
    assert status == 400, (status, rbody)
    message = error_of(rbody)
    assert "nested deeper than the limit of 64 levels" in message, message


async def test_json_up_to_the_limit_and_deep_non_json_data_are_accepted(mesh):
    url = mesh.url + "/default/br"
    ids = []
    status, _, _ = await post(url, headers=binary_headers(id_="b64"), body=nested(64))
    assert status == 202
    ids.append("b64")
    event = orjson.dumps(structured(id="s63", data=0)).replace(b'"data":0', b'"data":' + nested(63))
    status, _, body = await post(
        url, headers={"content-type": "application/cloudevents+json"}, body=event
    )
    assert status == 202, body
    ids.append("s63")
    # Not JSON: the data is opaque bytes, whatever it looks like.
    headers = {**binary_headers(id_="octets"), "content-type": "application/octet-stream"}
    status, _, _ = await post(url, headers=headers, body=nested(1000))
    assert status == 202
    ids.append("octets")
    await mesh.sink.wait_for(3)
    assert sorted(mesh.sink.ids()) == sorted(ids)


async def test_huge_batches_do_not_stall_other_requests(tmp_path, prefix, make_sink):
    """16 batches of 70,000 tiny events (4 MiB each) at once: each gets 413, and a normal event
    sent meanwhile waits little longer than while 16 bodies of the same size that need no
    decoding are refused (before the fix: seconds; 7.5 s in the report of issue 11).

    The control run carries the same bytes, so what it measures is the machine (uploads,
    CPU shared with RabbitMQ and the test) rather than rabbitmesh's decoding."""
    sink = await make_sink()
    config = tmp_path / "config"
    write_manifests(config, BROKER.replace("SINK", sink.url))
    mesh = await MeshProcess(config, prefix).start()
    url = mesh.url + "/default/br"
    events = [
        {"specversion": "1.0", "id": str(i), "source": "s", "type": "t"} for i in range(70_000)
    ]
    huge = orjson.dumps(events)
    assert 4_000_000 < len(huge) <= 4 * 1024 * 1024
    batch = {"content-type": "application/cloudevents-batch+json"}
    not_an_event = {"content-type": "application/octet-stream"}  # 400 once read, no decoding
    try:
        async with aiohttp.ClientSession() as session:

            async def normal() -> float:
                started = time.monotonic()
                async with session.post(url, headers=binary_headers(), data=b"{}") as r:
                    assert r.status == 202, await r.text()
                return time.monotonic() - started

            async def big(headers: dict[str, str]) -> tuple[int, str]:
                async with (
                    aiohttp.ClientSession() as own,  # a connection each, as 16 clients
                    own.post(url, headers=headers, data=huge) as r,
                ):
                    return r.status, await r.text()

            async def under(headers: dict[str, str]) -> tuple[list[float], list[tuple[int, str]]]:
                """Normal events, one every 20 ms, while 16 big requests are answered."""
                requests = [asyncio.create_task(big(headers)) for _ in range(16)]
                probes = []
                while not all(r.done() for r in requests):
                    probes.append(asyncio.create_task(normal()))
                    await asyncio.sleep(0.02)  # the probes' pace, not synchronisation
                return list(await asyncio.gather(*probes)), [r.result() for r in requests]

            for _ in range(3):
                await normal()  # warm-up: connections, caches
            baseline = [await normal() for _ in range(10)]
            control, control_answers = await under(not_an_event)
            attacked, answers = await under(batch)
    finally:
        await mesh.stop()
    assert all(s == 400 for s, _ in control_answers), control_answers[:2]
    assert all(s == 413 and "exceeds the limit of 1000 events" in t for s, t in answers), answers[
        :2
    ]
    assert control and attacked, "no normal event was sent while the big requests were answered"
    med = statistics.median
    report = (
        f"normal events under the batches: median {med(attacked):.3f}s, slowest "
        f"{max(attacked):.3f}s ({len(attacked)} sent); under the control: median "
        f"{med(control):.3f}s, slowest {max(control):.3f}s ({len(control)} sent); baseline "
        f"median {med(baseline):.3f}s"
    )
    print(report)  # shown with -s
    # Before the fix the batches held the loop for seconds (a normal event even ran into the
    # 10 s publish timeout); margins absorb a busy machine.
    assert med(attacked) < med(control) + 0.5, report
    assert max(attacked) < max(control) + 3.0, report


async def test_a_source_whose_events_rabbitmq_cannot_take_gets_a_clear_error(
    start_mesh, make_sink, caplog
):
    """Sources publish through the broker's ingress: an event with 24 extensions of 7 kB
    (ceOverrides) is refused there with 413 naming the limit, which the source logs; the
    shared publisher connection is never closed."""
    caplog.set_level(logging.INFO)
    sink = await make_sink()
    extensions = ", ".join(f"x{i}: {'v' * 7_000}" for i in range(24))
    mesh = await start_mesh(
        BROKER.replace("SINK", sink.url)
        + f"""---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: heavy}}
spec:
  schedule: "*/1 * * * * *"
  ceOverrides: {{extensions: {{{extensions}}}}}
  sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: br}}}}
"""
    )
    link = publisher_link(mesh)

    def refusals() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "rabbitmesh.sources" and "not delivered" in r.getMessage()
        ]

    found = await eventually(refusals, timeout=20, what="the source logging the refusal")
    assert "HTTP 413" in found[0] and "frame limit" in found[0], found[0]
    assert publisher_link(mesh) is link
    assert (await post_binary(mesh.url + "/default/br"))[0] == 202
    await sink.wait_for(1)
    assert all(r.headers.get("ce-type") != "dev.knative.sources.ping" for r in sink.received)


async def response_head(url: str, head: bytes) -> list[bytes]:
    """Send only a request's head (its body never comes) and read the response's head."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    finally:
        writer.close()
    return raw.lower().split(b"\r\n")


@pytest.mark.parametrize("path", ["/default/br", "/apply"])
async def test_a_body_refused_before_it_is_read_closes_the_connection(mesh, path):
    """A 413 from Content-Length says `Connection: close`: the client may stop sending the
    rest (kept alive, it would have to send every byte, and the server read them, before the
    connection could be reused: what made repeated 4 MiB refusals cost everyone)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/yaml\r\n"
        "Content-Length: 100000000\r\n\r\n"
    ).encode()
    lines = await response_head(mesh.url, head)
    assert lines[0].startswith(b"http/1.1 413"), lines
    assert b"connection: close" in lines, lines


async def test_an_answered_request_keeps_its_connection(mesh):
    """The other side of the rule above: a request whose body was read stays kept alive."""
    body = b"{}"
    head = (
        "POST /default/br HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Ce-Specversion: 1.0\r\nCe-Id: keep\r\nCe-Source: s\r\nCe-Type: t\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    lines = await response_head(mesh.url, head)
    assert lines[0].startswith(b"http/1.1 202"), lines
    assert b"connection: close" not in lines, lines


def over_long_batch(third: bytes) -> bytes:
    """2,000 events (over the limit of 1,000), the third one replaced by `third`."""
    items = [orjson.dumps(structured(id=str(i))) for i in range(2000)]
    items[2] = third
    return b"[" + b",".join(items) + b"]"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (over_long_batch(orjson.dumps(structured())), 413, "batch exceeds the limit of 1000"),
        (over_long_batch(b"{oops}"), 400, "malformed JSON"),
        # array, event, then data 63 deep: 65 levels
        (
            over_long_batch(orjson.dumps(structured(data=0)).replace(b"0}", nested(63) + b"}")),
            400,
            "nested deeper than the limit of 64 levels",
        ),
        (over_long_batch(b'{"id": "\\ud800"}'), 413, "limit of 1000"),
    ],
    ids=["plain", "broken-item", "deep-item", "lone-surrogate"],
)
async def test_an_over_long_batch_gets_the_answer_its_first_items_decide(
    mesh, body, status, message
):
    """An over-long batch is refused after its first 1,001 items were read, and the answer is
    the one the whole body gets: 413, unless an item before the limit is broken or too deep
    (400). The usual case is decided on the event loop by one parse of that prefix; the rest
    falls back to the item-by-item decode."""
    got, _, rbody = await post(
        mesh.url + "/default/br",
        headers={"content-type": "application/cloudevents-batch+json"},
        body=body,
    )
    assert got == status, rbody
    assert message in error_of(rbody), rbody


async def test_an_over_long_batch_is_refused_before_the_rest_of_it_arrives(mesh):
    """A batch is counted as it is read: the 413 for event 1,001 comes once its bytes came,
    not after the whole body (here the rest is never sent: without the count the server would
    wait for it, and answer 408 after RABBITMESH_REQUEST_TIMEOUT)."""
    one = {"specversion": "1.0", "id": "", "type": "t", "source": 's,]"[{'}
    whole = orjson.dumps([{**one, "id": str(i)} for i in range(60_000)])
    assert len(whole) < 4 * 1024 * 1024  # under RABBITMESH_MAX_EVENT_BYTES
    head = (
        "POST /default/br HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/cloudevents-batch+json\r\n"
        f"Content-Length: {len(whole)}\r\n\r\n"
    ).encode()
    host, port = mesh.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + whole[:200_000])  # about 2,500 events of 60,000
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        lines = raw.lower().split(b"\r\n")
        assert lines[0].startswith(b"http/1.1 413"), lines
        assert b"connection: close" in lines, lines
        length = next(int(x.split(b":")[1]) for x in lines if x.startswith(b"content-length:"))
        assert error_of(await reader.readexactly(length)) == (
            "batch exceeds the limit of 1000 events"
        )
    finally:
        writer.close()


async def test_the_rest_of_a_refused_body_is_not_read_and_the_connection_closed(mesh):
    """After a 413 from Content-Length the server stops reading the connection: a client that
    keeps sending stalls once TCP's windows are full, instead of making the server receive
    (and throw away) megabytes, and the connection is closed within about a second. Before,
    the rest was read and dropped for a second (hundreds of MiB on loopback), and before that
    parsed by aiohttp's lingering read for up to 10 s."""
    head = (
        b"POST /apply HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/yaml\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    host, port = mesh.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    # A fixed send buffer (no autotuning), so what the kernel takes is what the server let in.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        assert raw.lower().startswith(b"http/1.1 413"), raw
        started = time.monotonic()
        handed = 0
        outcome = "still sending"
        chunk = b"x" * 65536
        while time.monotonic() - started < 8:  # a client that does not stop sending
            try:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), timeout=1)
            except TimeoutError:
                outcome = "stalled"  # nobody reads: TCP's windows are full
                break
            except ConnectionError:
                outcome = "reset"
                break
            handed += len(chunk)
        assert outcome in ("stalled", "reset"), f"the server read {handed} bytes in 8 s"
        assert handed < 16 * 1024 * 1024, f"the server took {handed} bytes of a refused body"
        # ...and the server closes the connection (reset: its unread bytes are discarded).
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), timeout=10)
        assert time.monotonic() - started < 10
    finally:
        writer.close()
