"""The helper services as the processes users start (docs/contract.md §7)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from tests.support.events import post, post_binary

pytestmark = pytest.mark.integration


async def test_heartbeats_post_to_k_sink_with_overrides(start_tool, make_sink):
    sink = await make_sink()
    await start_tool(
        "heartbeats",
        "--period",
        "100ms",
        "--label",
        "hi",
        listen=False,
        env={
            "K_SINK": sink.url,
            "K_CE_OVERRIDES": '{"extensions": {"team": "blue"}}',
            "NAME": "hb",
            "NAMESPACE": "demo",
        },
    )
    first, second = (await sink.wait_for(2))[:2]
    for r in (first, second):
        assert r.headers["ce-type"] == "dev.knative.eventing.samples.heartbeat"
        assert r.headers["ce-source"] == "https://knative.dev/eventing/cmd/heartbeats/#demo/hb"
        assert r.headers["ce-team"] == "blue" and r.headers["ce-the"] == "42"
        assert r.headers["content-type"] == "application/json"
    assert [json.loads(r.body) for r in (first, second)] == [
        {"id": 1, "label": "hi"},
        {"id": 2, "label": "hi"},
    ]
    assert first.ce_id != second.ce_id
    assert second.at - first.at > 0.05  # paced by --period, not sent in a burst


async def test_appender_replies_and_explains_what_it_refuses(start_tool):
    appender = await start_tool("appender", env={"MESSAGE": " - from env"})
    status, headers, body = await post(
        appender.url,
        headers={
            "ce-specversion": "1.0",
            "ce-id": "7",
            "ce-type": "t",
            "ce-source": "s",
            "ce-myext": "x",
            "content-type": "application/json",
        },
        body=b'{"message": "m", "n": 1}',
    )
    assert status == 200
    assert (headers["ce-id"], headers["ce-myext"]) == ("7", "x")
    assert json.loads(body) == {"message": "m - from env", "n": 1}
    status, _, body = await post(
        appender.url,
        headers={
            "ce-specversion": "1.0",
            "ce-id": "8",
            "ce-type": "t",
            "ce-source": "s",
            "content-type": "text/plain",
        },
        body=b"words",
    )
    assert status == 400 and "must be JSON" in json.loads(body)["error"]
    status, _, body = await post(appender.url, body=b"not an event")
    assert status == 400


async def test_filter_replies_only_matching_events(start_tool):
    f = await start_tool("filter", env={"FILTER": "type = 'img.hj.com'"})
    status, _ = await post_binary(f.url, "img.hj.com")
    assert status == 200
    status, headers, body = await post(
        f.url,
        headers={"ce-specversion": "1.0", "ce-id": "1", "ce-type": "text.hj.com", "ce-source": "s"},
    )
    assert (status, body) == (200, b"") and "ce-id" not in headers


async def test_filter_with_a_bad_expression_stops_with_the_reason():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitmesh",
        "filter",
        "--expression",
        "type = = 'x'",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert "--expression" in err.decode()
