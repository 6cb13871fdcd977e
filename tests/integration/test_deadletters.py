"""Dead letters you can see and send again (issue 14, docs/delivery.md) — real RabbitMQ,
real HTTP subscribers, the real `rabbitmesh deadletter` command."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp
import pytest

from tests.integration.test_cli import rabbitmesh
from tests.support.api import call
from tests.support.events import post_binary
from tests.support.faults import vm_rss_kib
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import MeshProcess, write_manifests
from tests.support.sink import Received, Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TRIGGER_PATH = "/apis/eventing.knative.dev/v1/namespaces/default/triggers/tr/deadletters"


def manifests(sub_url: str, delivery: str = "retry: 1, backoffDelay: PT0.05S") -> str:
    return broker_and_trigger(sub_url, trigger="tr", delivery=f"{{{delivery}}}")


def fails_twice_then_ok() -> tuple[Counter[str], object]:
    attempts: Counter[str] = Counter()

    def answer(r: Received, _i: int) -> Reply:
        attempts[r.ce_id or ""] += 1
        if attempts[r.ce_id or ""] <= 2:
            return Reply(503, body=b"busy, try later")
        return Reply(200)

    return attempts, answer


async def listed(url: str) -> list[dict]:
    run = await rabbitmesh("deadletter", "list", "--trigger", "tr", "-o", "json", server=url)
    assert run.code == 0, run
    return json.loads(run.out)


async def test_redrive_of_an_event_that_fails_twice_then_succeeds(start_mesh, make_sink):
    attempts, answer = fails_twice_then_ok()
    sink = await make_sink(answer)
    mesh = await start_mesh(manifests(sink.url))
    ids = []
    for n in range(3):  # one after the other: each dead-lettered before the next is sent
        status, eid = await post_binary(mesh.url + "/default/br", "com.example.dl", id_=f"e{n}")
        assert status == 202
        ids.append(eid)
        await eventually(
            lambda n=n: _api_count(mesh.url, n + 1), timeout=20, what=f"{n + 1} dead letters"
        )
    assert len(sink.received) == 6  # 1 attempt + 1 retry each, all 503

    items = await eventually(
        lambda: _three(listed(mesh.url)), timeout=20, what="three dead letters listed"
    )
    assert [i["id"] for i in items] == ids  # in the order they failed
    first = items[0]
    assert first["type"] == "com.example.dl"
    assert first["source"] == "tests"
    assert first["knativeerrorcode"] == "503"
    assert first["knativeerrordata"] == "busy, try later"  # decoded
    assert first["attempts"] == 2
    assert first["failedAt"].endswith("Z")
    # Listing removes nothing and reorders nothing.
    assert [i["id"] for i in await listed(mesh.url)] == ids

    table = await rabbitmesh("deadletter", "list", "--trigger", "tr", server=mesh.url)
    assert table.code == 0 and "e1" in table.out and "503" in table.out, table

    run = await rabbitmesh(
        "deadletter", "redrive", "--trigger", "tr", "--id", "e1", server=mesh.url
    )
    assert run.code == 0 and "1 dead letter(s) redriven" in run.out, run
    await sink.wait_for(7)
    assert sink.received[6].ce_id == "e1"
    assert attempts["e1"] == 3  # a fresh retry budget: the third attempt succeeded
    # No error extensions travel with the redriven event.
    assert "ce-knativeerrorcode" not in sink.received[6].headers
    assert [i["id"] for i in await listed(mesh.url)] == ["e0", "e2"]

    run = await rabbitmesh("deadletter", "purge", "--trigger", "tr", "--all", server=mesh.url)
    assert run.code == 0 and "2 dead letter(s) purged" in run.out, run
    assert await listed(mesh.url) == []
    assert len(sink.received) == 7  # purge sends nothing


async def _api_count(url: str, n: int) -> bool:
    status, body = await call("GET", url + TRIGGER_PATH)
    return status == 200 and len(body["items"]) == n


async def _three(items_coro) -> list[dict] | None:  # type: ignore[no-untyped-def]
    items = await items_coro
    return items if len(items) == 3 else None


async def test_an_event_dead_lettered_again_after_redrive_is_listed_again(start_mesh, make_sink):
    sink = await make_sink(lambda r, i: Reply(500))
    mesh = await start_mesh(manifests(sink.url, "retry: 0"))
    status, _ = await post_binary(mesh.url + "/default/br", id_="again")
    assert status == 202
    await eventually(lambda: _count(listed(mesh.url), 1), timeout=20, what="one dead letter")
    status, body = await call("POST", mesh.url + TRIGGER_PATH + "/redrive", {"all": True})
    assert status == 200 and body["redrive"] == ["again"], body
    await sink.wait_for(2)
    items = await eventually(lambda: _count(listed(mesh.url), 1), timeout=20, what="listed")
    assert items[0]["id"] == "again"


async def _count(items_coro, n: int) -> list[dict] | None:  # type: ignore[no-untyped-def]
    items = await items_coro
    return items if len(items) == n else None


async def test_events_the_dead_letter_sink_refuses_for_good_are_listed(start_mesh, make_sink):
    sub = await make_sink(lambda r, i: Reply(503))
    dls = await make_sink(lambda r, i: Reply(400, body=b"not for me"))
    mesh = await start_mesh(manifests(sub.url, f'retry: 0, deadLetterSink: {{uri: "{dls.url}"}}'))
    status, eid = await post_binary(mesh.url + "/default/br", id_="refused")
    assert status == 202
    await dls.wait_for(1)
    (item,) = await eventually(lambda: _count(listed(mesh.url), 1), timeout=20, what="listed")
    assert item["id"] == "refused"
    assert item["knativeerrorcode"] == "503"
    assert "refused" in item["reason"]


async def test_zero_retention_drops_as_knative_does(start_mesh, make_sink):
    sink = await make_sink(lambda r, i: Reply(500))
    mesh = await start_mesh(manifests(sink.url, "retry: 0"), dead_letter_retention="PT0S")
    status, _ = await post_binary(mesh.url + "/default/br", id_="gone")
    assert status == 202
    await sink.wait_for(1)
    # The drop is counted once delivery ended (the metric is the observable end).
    await eventually(
        lambda: _metric(mesh.url, "event_dropped_total"), timeout=20, what="drop counted"
    )
    assert await listed(mesh.url) == []


async def _metric(url: str, name: str) -> bool:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return any(line.startswith(name) and not line.endswith(" 0.0") for line in text.splitlines())


async def test_bad_redrive_requests_are_refused_naming_the_field(start_mesh, make_sink):
    sink = await make_sink()
    mesh = await start_mesh(manifests(sink.url))
    url = mesh.url + TRIGGER_PATH
    for body, field in [
        ({}, "body.ids"),
        ({"ids": "x"}, "body.ids"),
        ({"ids": ["a"], "all": True}, "body.ids"),
        ({"ids": [1]}, "body.ids"),
        ({"everything": True}, "body.everything"),
        ({"all": "yes"}, "body.all"),
    ]:
        status, answer = await call("POST", url + "/redrive", body)
        assert status == 422, (body, answer)
        assert field in answer["error"], answer
    status, _ = await call("POST", url + "/explode", {"all": True})
    assert status == 404
    status, _ = await call(
        "GET", mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/triggers/no/deadletters"
    )
    assert status == 404
    status, _ = await call(
        "GET", mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/brokers/br/deadletters"
    )
    assert status == 404
    run = await rabbitmesh("deadletter", "redrive", "--trigger", "tr", server=mesh.url)
    assert run.code != 0 and "--id" in run.err


async def test_a_web_page_or_a_tokenless_client_cannot_redrive_or_purge(start_mesh, make_sink):
    """Attack test (docs/security.md): redrive and purge are changes; the admin API's rules
    hold for them. The dead letter stays listed after every refused attempt."""
    import aiohttp

    sink = await make_sink(lambda r, i: Reply(500))
    mesh = await start_mesh(manifests(sink.url, "retry: 0"), admin_token="t0k")
    status, _ = await post_binary(mesh.url + "/default/br", id_="kept")
    assert status == 202
    url = mesh.url + TRIGGER_PATH
    await eventually(lambda: _count(listed(mesh.url), 1), timeout=20, what="one dead letter")
    async with aiohttp.ClientSession() as s:
        for action in ("redrive", "purge"):
            token = {"Authorization": "Bearer t0k"}  # even with the token:
            attempts = [
                ({**token, "Content-Type": "text/plain"}, 415),  # a form post from a page
                (
                    {**token, "Content-Type": "application/json", "Origin": "http://evil.example"},
                    403,
                ),
                ({"Content-Type": "application/json"}, 401),  # no token
                ({"Content-Type": "application/json", "Authorization": "Bearer nope"}, 401),
            ]
            for headers, expected in attempts:
                async with s.post(f"{url}/{action}", data=b'{"all": true}', headers=headers) as r:
                    assert r.status == expected, (action, headers, await r.text())
    assert [i["id"] for i in await listed(mesh.url)] == ["kept"]
    run = await rabbitmesh(
        "deadletter",
        "purge",
        "--trigger",
        "tr",
        "--all",
        server=mesh.url,
        RABBITMESH_ADMIN_TOKEN="t0k",
    )
    assert run.code == 0, run
    assert await listed(mesh.url) == []


async def _kept(url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("event_dead_letters_kept_total{")
    )


async def test_listing_a_large_dead_letter_store_does_not_hold_its_bodies(tmp_path, prefix):
    """An anonymous GET of the listing read every entry with its body into memory at once:
    one request cost the store's size in RSS (1.1 GB for 300 dead letters of 4 MB); and each
    read prefetched up to 500 messages (2 GB of 4 MB events), however many read at once."""
    count, size = 40, 4 * 1024 * 1024
    write_manifests(tmp_path / "c", manifests("http://127.0.0.1:1/", "retry: 0"))
    mesh = await MeshProcess(tmp_path / "c", prefix, RABBITMESH_WORKERS="1").start()
    try:
        body = b'"' + b"x" * (size - 2) + b'"'
        async with aiohttp.ClientSession() as s:
            for n in range(count):
                async with s.post(
                    mesh.url + "/default/br",
                    data=body,
                    headers={
                        "ce-id": f"big{n}",
                        "ce-specversion": "1.0",
                        "ce-type": "com.example.big",
                        "ce-source": "attacker",
                        "content-type": "application/json",
                    },
                ) as r:
                    assert r.status == 202
        # Counted from /metrics: a listing before the measured one would leave its memory
        # with the allocator and hide the growth.
        await eventually(
            lambda: _ge(_kept(mesh.url), count), timeout=60, what=f"{count} dead letters kept"
        )
        assert mesh.proc is not None
        pid = mesh.proc.pid
        before = vm_rss_kib(pid)
        peak = before
        # Four at once: each read holds what it has prefetched and not read yet.
        listings = asyncio.gather(*(call("GET", mesh.url + TRIGGER_PATH) for _ in range(4)))
        while not listings.done():
            peak = max(peak, vm_rss_kib(pid))
            await asyncio.sleep(0.01)
        for status, listed_body in listings.result():
            assert status == 200
            assert len(listed_body["items"]) == count
        grown_mib = (peak - before) / 1024
        store_mib = count * size / 2**20
        print(f"listing RSS growth {grown_mib:.0f} MiB, store {store_mib:.0f} MiB")
        assert grown_mib < store_mib / 4, (grown_mib, store_mib)
    finally:
        await mesh.stop()


async def _ge(value, n: float) -> bool:  # type: ignore[no-untyped-def]
    return await value >= n
