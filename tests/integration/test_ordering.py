"""Per-key ordered delivery (issue 14, docs/ordering.md) against real RabbitMQ and real HTTP.

The promise checked: for two events with the same `partitionkey`, where the second was sent
after the first was accepted (202), the second's first delivery attempt starts only after
the first succeeded (or was dead-lettered); retries and backoff included.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter, defaultdict

import aiohttp
import pytest

from tests.support.events import binary_headers
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.sink import Received, Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

KEYS = 8
PER_KEY = 50


def manifests(sub_url: str, annotations: str = "", retry: int = 5) -> str:
    return broker_and_trigger(
        sub_url,
        trigger="tr",
        trigger_annotations=annotations,
        delivery=f"{{retry: {retry}, backoffPolicy: linear, backoffDelay: PT0.05S}}",
    )


ORDERED = '"rabbitmesh.dev/delivery-order": ordered, "rabbitmesh.dev/partitions": "8"'


class FlakySubscriber:
    """Fails every 7th event of a key twice (503), then accepts it; records outcomes."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        #: (key, seq, succeeded) in the order the requests arrived
        self.log: list[tuple[str, int, bool]] = []

    def __call__(self, r: Received, _i: int) -> Reply:
        key, seq = r.headers["ce-partitionkey"], int(r.headers["ce-seq"])
        self.attempts[r.ce_id or ""] += 1
        ok = not (seq % 7 == 3 and self.attempts[r.ce_id or ""] <= 2)
        self.log.append((key, seq, ok))
        return Reply(200 if ok else 503)


def check_order(log: list[tuple[str, int, bool]]) -> dict[str, int]:
    """Assert the promise per key; return how many duplicate deliveries each key saw."""
    by_key: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    for key, seq, ok in log:
        by_key[key].append((seq, ok))
    duplicates: dict[str, int] = {}
    for key, seen in by_key.items():
        done: set[int] = set()
        started: set[int] = set()
        dups = 0
        for seq, ok in seen:
            if seq not in started:
                assert seq == 0 or seq - 1 in done, (
                    f"key {key}: event {seq} was first attempted before event {seq - 1} "
                    f"succeeded; attempts: {seen}"
                )
                started.add(seq)
            elif seq in done:
                dups += 1  # a redelivery after a crash: at least once, not a reorder
            if ok:
                done.add(seq)
        assert done == set(range(PER_KEY)), f"key {key}: missing {set(range(PER_KEY)) - done}"
        duplicates[key] = dups
    assert len(by_key) == KEYS
    return duplicates


async def send_keys(urls: list[str], run: str, pace: float = 0.0) -> None:
    """Each key's events one after the other (each after the previous one's 202); keys in
    parallel; round-robin over `urls` (replicas)."""
    async with aiohttp.ClientSession() as s:

        async def one_key(k: int) -> None:
            for seq in range(PER_KEY):
                headers = binary_headers(
                    "com.example.ordered",
                    f"{run}-{k}-{seq}",
                    partitionkey=f"key-{k}",
                    seq=str(seq),
                )
                url = urls[(k + seq) % len(urls)]
                for _ in range(1200):  # replica killed, RabbitMQ down: send again (503)
                    try:
                        async with s.post(url, headers=headers, data=b"{}") as r:
                            if r.status == 202:
                                break
                    except (aiohttp.ClientError, OSError):
                        pass
                    url = urls[(urls.index(url) + 1) % len(urls)]
                    await asyncio.sleep(0.05)  # pacing a resend, not synchronisation
                else:
                    raise AssertionError(f"event {k}/{seq} never accepted")
                if pace:
                    await asyncio.sleep(pace)  # a paced load, not synchronisation

        await asyncio.gather(*(one_key(k) for k in range(KEYS)))


async def test_ordered_trigger_keeps_per_key_order_with_retries(start_mesh, make_sink):
    flaky = FlakySubscriber()
    sink = await make_sink(flaky)
    mesh = await start_mesh(manifests(sink.url, ORDERED))
    await send_keys([mesh.url + "/default/br"], "one")
    total_attempts = KEYS * PER_KEY + 2 * KEYS * len([s for s in range(PER_KEY) if s % 7 == 3])
    await sink.wait_for(total_attempts, timeout=120)
    check_order(flaky.log)
    assert len(flaky.log) == total_attempts  # retries in-process: none lost, none extra


async def test_unordered_trigger_does_reorder_under_retries(start_mesh, make_sink):
    """The control: the same load without the annotation breaks the promise (retries go
    through delay queues and later events overtake them), so the check above can fail."""
    flaky = FlakySubscriber()
    sink = await make_sink(flaky)
    mesh = await start_mesh(manifests(sink.url))
    await send_keys([mesh.url + "/default/br"], "ctl")
    total_attempts = KEYS * PER_KEY + 2 * KEYS * len([s for s in range(PER_KEY) if s % 7 == 3])
    await sink.wait_for(total_attempts, timeout=120)
    with pytest.raises(AssertionError, match="first attempted before"):
        check_order(flaky.log)


async def test_bad_ordering_annotations_are_refused_naming_the_field(start_mesh, make_sink):
    from tests.support.api import TRIGGERS, call, trigger

    sink = await make_sink()
    mesh = await start_mesh(manifests(sink.url))
    for notes, field in [
        ({"rabbitmesh.dev/delivery-order": "sorted"}, "rabbitmesh.dev/delivery-order"),
        (
            {"rabbitmesh.dev/delivery-order": "ordered", "rabbitmesh.dev/partitions": "0"},
            "rabbitmesh.dev/partitions",
        ),
        ({"rabbitmesh.dev/partitions": "65"}, "rabbitmesh.dev/partitions"),
    ]:
        obj = trigger("bad", "br", sink.url)
        obj["metadata"]["annotations"] = notes
        status, body = await call("POST", mesh.url + TRIGGERS.format(ns="default"), obj)
        assert status == 422, body
        assert field in str(body)


async def test_two_replicas_and_a_sigkill_keep_per_key_order(tmp_path, prefix, make_sink):
    flaky = FlakySubscriber()
    sink = await make_sink(flaky)
    write_manifests(tmp_path / "c", manifests(sink.url, ORDERED, retry=10))
    a = MeshProcess(tmp_path / "c", prefix)
    b = MeshProcess(tmp_path / "c", prefix)
    await asyncio.gather(a.start(), b.start())
    c: MeshProcess | None = None
    try:
        urls = [a.url + "/default/br", b.url + "/default/br"]
        sending = asyncio.create_task(send_keys(urls, "kill"))
        # SIGKILL replica a in the middle: once a third of the events were delivered.
        await eventually(
            lambda: len({(k, s) for k, s, ok in flaky.log if ok}) >= KEYS * PER_KEY // 3,
            timeout=120,
            what="a third of the events delivered",
        )
        a.signal(signal.SIGKILL)
        await a.wait()
        at_kill = len({(k, s) for k, s, ok in flaky.log if ok})
        assert at_kill < KEYS * PER_KEY, "killed too late to test anything"
        c = await MeshProcess(tmp_path / "c", prefix).start()  # a restarted
        await sending
        await eventually(
            lambda: len({(k, s) for k, s, ok in flaky.log if ok}) == KEYS * PER_KEY,
            timeout=180,
            what="every event delivered",
        )
        duplicates = check_order(flaky.log)
        # at least once: only the events in flight at the kill may come twice
        assert sum(duplicates.values()) <= 2 * KEYS + 256, duplicates
    finally:
        await asyncio.gather(b.stop(), *([c.stop()] if c else []))


async def test_ordered_subscription_keeps_per_key_order_and_keeps_dead_letters(
    start_mesh, make_sink
):
    """The annotations on a Subscription; its dead letters listed with --subscription."""
    from tests.integration.test_cli import rabbitmesh

    flaky = FlakySubscriber()
    sink = await make_sink(flaky)
    mesh = await start_mesh(f"""
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        metadata: {{name: ch}}
        ---
        apiVersion: messaging.knative.dev/v1
        kind: Subscription
        metadata:
          name: sub
          annotations: {{{ORDERED}}}
        spec:
          channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: ch}}
          subscriber: {{uri: "{sink.url}"}}
          delivery: {{retry: 1, backoffPolicy: linear, backoffDelay: PT0.05S}}
        """)
    await send_keys([mesh.url + "/channels/default/ch"], "sub")
    # retry 1: every 7th event fails twice, so it is dead-lettered after two attempts, and
    # the next event of its key starts only after that.
    failing = [s for s in range(PER_KEY) if s % 7 == 3]
    total_attempts = KEYS * PER_KEY + KEYS * len(failing)
    await sink.wait_for(total_attempts, timeout=120)
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, seq, _ok in flaky.log:
        by_key[key].append(seq)
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"key {key} out of order: {seqs}"

    async def listed() -> list[dict] | None:
        run = await rabbitmesh(
            "deadletter", "list", "--subscription", "sub", "-o", "json", server=mesh.url
        )
        assert run.code == 0, run
        items = json.loads(run.out)
        return items if len(items) == KEYS * len(failing) else None

    items = await eventually(listed, timeout=30, what="the dead letters listed")
    assert {i["attempts"] for i in items} == {2}


class LongStringBytes(bytes):
    """A header value sent as an AMQP long string (`S`) of these exact bytes, UTF-8 or not
    (as a Java or Go client can send it; pamqp, like RabbitMQ, passes it through as bytes)."""


def publish_raw_long_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    import pamqp.common
    import pamqp.encode

    plain = pamqp.encode.encode_table_value

    def encode(value: object) -> bytes:
        if isinstance(value, LongStringBytes):
            return b"S" + pamqp.common.Struct.integer.pack(len(value)) + bytes(value)
        return plain(value)  # type: ignore[arg-type]

    monkeypatch.setattr(pamqp.encode, "encode_table_value", encode)


async def test_a_key_that_is_not_utf8_wedges_nothing(start_mesh, make_sink, monkeypatch):
    """An AMQP producer's `ce-partitionkey` whose bytes are not UTF-8 (pamqp hands such a
    long string over as bytes) raised UnicodeDecodeError in the splitter, outside any
    handler: the splitter closed its channel, the message went back to the head of the
    trigger's queue, and the next consume met it again, every 2 s, for ever. The whole
    ordered trigger was wedged: no event of any key was delivered again. Now such a key is
    hashed as the bytes it is."""
    import aio_pika

    from rabbitmesh.amqp.names import Names
    from rabbitmesh.filters.bindings import routing_key_for_type
    from tests.support.events import post_binary
    from tests.support.mesh import AMQP_URL

    sink = await make_sink()
    mesh = await start_mesh(manifests(sink.url, ORDERED))
    names = Names(mesh.settings.topology_prefix)
    kind = "com.example.ordered"
    publish_raw_long_strings(monkeypatch)
    hostile = [b"\xff\xfe-not-utf8", "\ud800-lone".encode("utf-8", "surrogatepass")]
    async with await aio_pika.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        x = await ch.get_exchange(names.broker_exchange("default", "br"))
        for i, key in enumerate(hostile):
            await x.publish(
                aio_pika.Message(
                    b"{}",
                    headers={
                        "ce-specversion": "1.0",
                        "ce-id": f"hostile-{i}",
                        "ce-source": "native",
                        "ce-type": kind,
                        "ce-partitionkey": LongStringBytes(key),
                    },
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key_for_type(kind),
            )
    monkeypatch.undo()
    # Events of ordinary keys, sent after the hostile ones, all arrive.
    ids = []
    for k in range(8):
        status, eid = await post_binary(mesh.url + "/default/br", kind, partitionkey=f"k{k}")
        assert status == 202
        ids.append(eid)

    def arrived() -> bool:
        return set(ids) <= {r.ce_id for r in sink.received}

    await eventually(arrived, timeout=20, what="the ordinary keys' events delivered")
    # The hostile events are no CloudEvents (an attribute is a string): parked once each,
    # as an unordered trigger parks them, not lost and not retried.
    queue = names.trigger_queue("default", "tr")
    workers = mesh.server.ctx.workers

    def parked() -> int:
        return sum(w.stats.parked for q, w in workers.items() if q.startswith(queue + ":p"))

    await eventually(lambda: parked() == 2, timeout=20, what="both hostile events parked")
    assert not {"hostile-0", "hostile-1"} & {r.ce_id for r in sink.received}
