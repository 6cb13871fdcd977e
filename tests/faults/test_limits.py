"""Client-side abuse the ingress bounds, where tests/integration/test_ingress.py does not
already cover it (body size, batch length, header count, slow bodies, in-flight publishes)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.events import binary_headers, post

pytestmark = pytest.mark.integration


async def test_an_oversized_header_line_is_refused(start_mesh):
    mesh = await start_mesh("")
    headers = {**binary_headers(), "ce-subject": "x" * 9000}  # aiohttp's limit: 8190 bytes
    status, _, _ = await post(mesh.url + "/default/br", headers=headers, body=b"{}")
    assert status in (400, 431)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_client_trickling_its_headers_is_cut_off(start_mesh):
    """Slowloris: one header line every 2 s never completes a request. aiohttp's keep-alive
    timer (75 s, set in rabbitmesh/server.py) closes the connection all the same."""
    mesh = await start_mesh("")
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port)
    writer.write(b"POST /default/br HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = asyncio.create_task(reader.read())
    try:
        while not closed.done():
            assert time.monotonic() - started < 120, "still connected after 120 s"
            writer.write(b"X-Slow: 1\r\n")
            # The client's pace, not test synchronisation: it waits for `closed` meanwhile.
            await asyncio.wait({closed}, timeout=2)
        assert closed.result() == b""  # closed, with no answer
    finally:
        writer.close()
    assert time.monotonic() - started < 90
