"""The web console's HTTP side (issue 17, docs/console.md) against a real rabbitmesh and
RabbitMQ: the page and its assets, the read endpoints, the live tail (what it shows, that it
leaves delivery alone, its queue goes with the page) and its limits, and who may use it:
the admin API's rules (token, loopback, no other site). The page itself in a real browser:
tests/browser/test_console_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.api import call
from tests.support.events import post, post_binary
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import InProcessMesh, MeshProcess, write_manifests
from tests.support.rabbit import list_names
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TOKEN = "console-test-token-3f9a"
SEED = broker_and_trigger("SINK", broker="br1", trigger="tr1", filter_type="com.hj.hi")


def seed(tmp_path, sink_url: str) -> Any:
    return write_manifests(tmp_path / "c", SEED.replace("SINK", sink_url)).parent


class Tail:
    """One live tail, read line by line as the page reads it."""

    def __init__(self, session: aiohttp.ClientSession, response: aiohttp.ClientResponse) -> None:
        self.session = session
        self.response = response
        self.lines: list[dict[str, Any]] = []

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.response.content.readline(), timeout)
        assert raw, "the tail ended"
        line = orjson.loads(raw)
        self.lines.append(line)
        return line

    async def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = await self.next(max(0.01, deadline - time.monotonic()))
            if line["type"] == "event":
                return line["event"]

    async def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = await self.next(max(0.01, deadline - time.monotonic()))
            if line["type"] == "stats":
                return line


@contextlib.asynccontextmanager
async def tail(url: str, body: dict[str, Any], token: str | None = None) -> AsyncIterator[Tail]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        r = await s.post(url + "/console/api/tail", json=body, headers=headers)
        try:
            assert r.status == 200, (r.status, await r.text())
            t = Tail(s, r)
            started = await t.next()
            assert started["type"] == "started", started
            yield t
        finally:
            r.close()


async def tail_status(url: str, body: dict[str, Any]) -> int:
    """Open a tail and leave at once: the status it got."""
    async with aiohttp.ClientSession() as s, s.post(url + "/console/api/tail", json=body) as r:
        return r.status


def broker_tail(name: str = "br1", filter_: str | None = None) -> dict[str, Any]:
    return {"kind": "Broker", "namespace": "default", "name": name, "filter": filter_}


async def test_the_page_and_its_assets_come_from_the_package(tmp_path, prefix, make_sink):
    """Everything the page loads is served here, with headers that keep other sites out:
    no CDN, no framing, no inline script, nothing but this origin to connect to."""
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix).start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(mesh.url + "/console", allow_redirects=False) as r:
                assert r.status == 200 and r.content_type == "text/html"
            async with s.get(mesh.url + "/console/") as r:
                html = await r.text()
                assert r.status == 200 and r.content_type == "text/html"
                csp = r.headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
                assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
                assert r.headers["X-Frame-Options"] == "DENY"
                assert "Access-Control-Allow-Origin" not in r.headers
            assets = ["console.js", "graph.js", "yaml.js", "dagre.min.js", "console.css"]
            for name in assets:
                assert f"/console/static/{name}" in html
                async with s.get(mesh.url + f"/console/static/{name}") as r:
                    assert r.status == 200, name
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
            # Nothing but the package's own files: no path reaches the file system.
            for path in (
                "/console/static/..%2F..%2Fserver.py",
                "/console/static/routes.py",
                "/console/static/__init__.py",
                "/console/static/missing.js",
            ):
                async with s.get(mesh.url + path) as r:
                    assert r.status == 404, path
            # No asset names a host: the page works offline.
            for name in assets:
                async with s.get(mesh.url + f"/console/static/{name}") as r:
                    text = await r.text()
                    assert "https://" not in text and "cdn" not in text.lower(), name
    finally:
        await mesh.stop()


async def test_reads_show_every_resource_and_follow_changes(tmp_path, prefix, make_sink):
    """/console/api/resources lists every kind at once (with the admin API paths), and
    /console/api/watch streams the changes of every kind in one connection."""
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix).start()
    try:
        status, body = await call("GET", mesh.url + "/console/api/resources")
        assert status == 200
        names = {(o["kind"], o["metadata"]["name"]) for o in body["items"]}
        assert {("Broker", "br1"), ("Trigger", "tr1")} <= names
        kinds = {k["kind"]: k for k in body["kinds"]}
        assert kinds["Trigger"]["plural"] == "triggers"
        rv = body["resourceVersion"]
        async with (
            aiohttp.ClientSession() as s,
            s.get(mesh.url + f"/console/api/watch?resourceVersion={rv}") as r,
        ):
            assert r.status == 200
            manifest = {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "br2", "namespace": "default"},
            }
            status, _ = await call(
                "POST",
                mesh.url + "/apis/eventing.knative.dev/v1/namespaces/default/brokers",
                manifest,
            )
            assert status == 201
            seen = []
            deadline = time.monotonic() + 10
            while not any(e["object"]["metadata"]["name"] == "br2" for e in seen):
                raw = await asyncio.wait_for(r.content.readline(), deadline - time.monotonic())
                seen.append(orjson.loads(raw))
            assert seen[-1]["type"] in ("ADDED", "MODIFIED")
        status, info = await call("GET", mesh.url + "/console/api/info")
        assert status == 200 and info["auth"] == {"tokenRequired": False, "loopbackTrusted": True}
        assert info["features"]["tail"] is True
    finally:
        await mesh.stop()


async def test_rates_count_what_the_broker_took(tmp_path, prefix, make_sink):
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix).start()
    try:
        _, before = await call("GET", mesh.url + "/console/api/rates")
        key = "Broker/default/br1"
        start = before["ingress"].get(key, {}).get("accepted", 0)
        delivered = before["dispatch"].get("trigger=default/tr1", {}).get("ok", 0)
        for _ in range(3):
            status, _ = await post_binary(mesh.url + "/default/br1", "com.hj.hi")
            assert status == 202
        await sink.wait_for(3)

        async def counted() -> bool:
            _, now = await call("GET", mesh.url + "/console/api/rates")
            took = now["ingress"][key]["accepted"] - start
            ok = now["dispatch"]["trigger=default/tr1"]["ok"] - delivered
            return took == 3 and ok == 3 and now["time"] > before["time"]

        await eventually(counted, what="3 accepted and 3 delivered in /console/api/rates")
    finally:
        await mesh.stop()


async def test_a_tail_shows_events_without_taking_them_from_triggers(tmp_path, prefix, make_sink):
    """A broker tail with a CESQL filter shows the matching events; the trigger still gets
    every event it should; a trigger tail shows only what the trigger's filter takes; the
    tail's queue is gone once the page goes."""
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix).start()
    try:
        async with tail(mesh.url, broker_tail(filter_="subject = 'wanted'")) as t:
            queues = list_names("queues", f"{prefix}.console-tail.")
            assert len(queues) == 1
            status, _ = await post_binary(mesh.url + "/default/br1", "com.hj.hi", id_="skip-me")
            assert status == 202
            status, _ = await post_binary(
                mesh.url + "/default/br1", "com.hj.hi", {"x": 1}, id_="shown", subject="wanted"
            )
            assert status == 202
            event = await t.next_event(timeout=5)
            assert event["id"] == "shown" and event["data"] == {"x": 1}
            assert event["type"] == "com.hj.hi" and event["subject"] == "wanted"
        # The trigger got both: the tail took nothing from its queue.
        got = await sink.wait_for(2)
        assert {r.ce_id for r in got} >= {"skip-me", "shown"}
        await eventually(
            lambda: not list_names("queues", f"{prefix}.console-tail."),
            timeout=10,
            what="the tail's queue deleted after the client left",
        )
        async with tail(mesh.url, {"kind": "Trigger", "namespace": "default", "name": "tr1"}) as t:
            await post_binary(mesh.url + "/default/br1", "com.other", id_="not-for-tr1")
            await post_binary(mesh.url + "/default/br1", "com.hj.hi", id_="for-tr1")
            event = await t.next_event(timeout=5)
            assert event["id"] == "for-tr1"
            stats = await t.stats()
            assert stats["shown"] == 1
    finally:
        await mesh.stop()


async def test_tail_requests_are_checked_and_errors_name_the_field(tmp_path, prefix, make_sink):
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix).start()
    url = mesh.url + "/console/api/tail"
    try:
        cases = [
            (broker_tail(filter_="type = "), 422, "filter"),
            ({"kind": "Secret", "namespace": "default", "name": "x"}, 422, "kind"),
            ({"kind": "Broker", "namespace": "default"}, 422, "name"),
            (broker_tail(filter_="x" * 5000), 422, "filter"),
            (broker_tail(name="nope"), 404, None),
        ]
        for body, code, field in cases:
            status, answer = await call("POST", url, body)
            assert status == code, (body, status, answer)
            if field:
                assert answer["details"][0]["field"] == field, answer
        status, answer = await call("POST", url, text="{nope", content_type="application/json")
        assert status == 400 and "malformed JSON" in answer["error"]
        status, answer = await call(
            "POST", url, text="{" + " " * 20000 + "}", content_type="application/json"
        )
        assert status == 413
    finally:
        await mesh.stop()


async def test_tails_are_bounded_in_number_and_rate(tmp_path, prefix, make_sink):
    """RABBITMESH_CONSOLE_MAX_TAILS tails at once (429 beyond, a slot frees when a page
    goes); RABBITMESH_CONSOLE_TAIL_RATE events a second to one page, the rest counted as
    skipped; the tail's queue holds at most 200 events (x-max-length, drop-head)."""
    sink = await make_sink()
    mesh = await InProcessMesh(
        seed(tmp_path, sink.url), prefix, console_max_tails=2, console_tail_rate=5.0
    ).start()
    try:
        async with tail(mesh.url, broker_tail()) as first:
            async with tail(mesh.url, broker_tail()):
                status, answer = await call("POST", mesh.url + "/console/api/tail", broker_tail())
                assert status == 429 and "RABBITMESH_CONSOLE_MAX_TAILS" in answer["error"]

            # The second page went: its slot is free again, as soon as the server saw it go.
            async def reopened() -> bool:
                return await tail_status(mesh.url, broker_tail()) == 200

            await eventually(reopened, timeout=2, what="a free tail slot after a page left")
            args = await queue_arguments(prefix)
            assert args and all("x-max-length" in a and "drop-head" in a for a in args), args
            started = time.monotonic()
            sent = 60
            async with aiohttp.ClientSession() as s:
                for i in range(sent):
                    async with s.post(
                        mesh.url + "/default/br1",
                        headers={
                            "ce-specversion": "1.0",
                            "ce-id": f"burst-{i}",
                            "ce-type": "com.burst",
                            "ce-source": "test",
                        },
                    ) as r:
                        assert r.status == 202

            async def all_scanned() -> dict[str, Any] | None:
                stats = await first.stats(timeout=5)
                return stats if stats["scanned"] >= sent else None

            stats = await eventually(all_scanned, timeout=20, what="the burst scanned")
            elapsed = time.monotonic() - started
            assert stats["shown"] + stats["skipped"] == stats["matched"] == sent
            # A bucket of 5 a second, full at the start: at most 5 + 5/s.
            assert stats["shown"] <= 5 + 5 * elapsed + 1, (stats, elapsed)
            assert stats["skipped"] > 0
            shown = [line for line in first.lines if line["type"] == "event"]
            assert len(shown) == stats["shown"]
    finally:
        await mesh.stop()


async def queue_arguments(prefix: str) -> list[str]:
    from tests.support.rabbit import rabbitmqctl

    out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "arguments")
    return [line for line in out.splitlines() if line.startswith(f"{prefix}.console-tail.")]


async def test_with_a_token_viewers_read_and_only_the_token_acts(tmp_path, prefix, make_sink):
    """RABBITMESH_ADMIN_TOKEN set: the page and every read are open; the tail and the
    access check need the token (401 without, from loopback too)."""
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix, admin_token=TOKEN).start()
    try:
        for path in ("/console/", "/console/api/resources", "/console/api/rates"):
            status, _ = await call("GET", mesh.url + path)
            assert status == 200, path
        status, info = await call("GET", mesh.url + "/console/api/info")
        assert info["auth"]["tokenRequired"] is True
        status, answer = await call("POST", mesh.url + "/console/api/check", {})
        assert status == 401
        status, _ = await call("POST", mesh.url + "/console/api/check", {}, token="wrong")
        assert status == 401
        status, answer = await call("POST", mesh.url + "/console/api/check", {}, token=TOKEN)
        assert status == 200 and answer == {"canChange": True}
        status, _ = await call("POST", mesh.url + "/console/api/tail", broker_tail())
        assert status == 401
        assert not list_names("queues", f"{prefix}.console-tail.")
        async with tail(mesh.url, broker_tail(), token=TOKEN) as t:
            await post_binary(mesh.url + "/default/br1", "com.hj.hi", id_="tok")
            assert (await t.next_event())["id"] == "tok"
    finally:
        await mesh.stop()


async def test_a_web_page_cannot_use_the_console_to_read_events_or_act(tmp_path, prefix):
    """What a page of another site can make a browser send to the console's acting
    endpoints (a rabbitmesh without a token, trusting loopback, as on a laptop): a simple
    text/plain POST, JSON with its Origin or Sec-Fetch-Site, and a request through a DNS
    name rebound to 127.0.0.1. None opens a tail (no queue is declared); none gets a CORS
    header, so the page could not read an answer anyway."""
    write_manifests(tmp_path / "c", SEED.replace("SINK", "http://127.0.0.1:9/"))
    mesh = await MeshProcess(tmp_path / "c", prefix).start()
    body = orjson.dumps(broker_tail())
    try:
        attacks = [
            ({"Content-Type": "text/plain"}, 415),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
            ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
            ({"Content-Type": "application/json", "Origin": "null"}, 403),
            ({"Content-Type": "application/json", "Origin": "http://localhost:3000"}, 403),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403),
            ({"Content-Type": "application/json", "Host": "evil.example"}, 421),
        ]
        for path in ("/console/api/tail", "/console/api/check"):
            for headers, code in attacks:
                status, answer_headers, raw = await post(
                    mesh.url + path, headers=headers, body=body
                )
                assert status == code, (path, headers, status, raw)
                assert not any(h.lower().startswith("access-control") for h in answer_headers)
        # A CORS preflight gets no permission either.
        status, answer_headers, _ = await post(
            mesh.url + "/console/api/tail",
            method="OPTIONS",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert not any(h.lower().startswith("access-control") for h in answer_headers)
        assert not list_names("queues", f"{prefix}.console-tail.")
        # The same request as the page itself sends it (same origin) opens a tail.
        status, _, _ = await post(
            mesh.url + "/console/api/check",
            headers={
                "Content-Type": "application/json",
                "Origin": mesh.url,
                "Sec-Fetch-Site": "same-origin",
            },
            body=b"{}",
        )
        assert status == 200
    finally:
        await mesh.stop()


async def test_the_console_watch_is_one_of_the_limited_watch_streams(tmp_path, prefix, make_sink):
    """The console's watch of every kind counts against RABBITMESH_MAX_WATCHES like an admin
    API watch: an open page cannot be multiplied past the limit by anyone who can read."""
    sink = await make_sink()
    mesh = await InProcessMesh(seed(tmp_path, sink.url), prefix, max_watches=1).start()
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(mesh.url + "/console/api/watch") as first,
        ):
            assert first.status == 200
            await asyncio.wait_for(first.content.readline(), 10)  # streaming: the slot is taken
            status, answer = await call("GET", mesh.url + "/console/api/watch")
            assert status == 429 and "RABBITMESH_MAX_WATCHES" in answer["error"]
            path = "/apis/eventing.knative.dev/v1/brokers?watch=true"
            status, _ = await call("GET", mesh.url + path)
            assert status == 429
    finally:
        await mesh.stop()
