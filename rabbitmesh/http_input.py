"""What every HTTP endpoint needs from a request, done once: the body read within a size and
a time limit, and header values as the bytes the client sent.

Used by the ingress, the admin API and the GitLab webhook alike, so a slow or oversized body
is refused the same way everywhere (413 naming the limit, 408 after the timeout) instead of
holding a handler open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

#: Bytes read from the socket at a time while a body arrives.
CHUNK = 64 * 1024


class BodyError(Exception):
    """The body could not be read within the limits: `status` (408 or 413) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(
    request: web.Request,
    max_bytes: int,
    timeout: float,
    *,
    limit_name: str,
    scan: Callable[[bytes], None] | None = None,
) -> bytes:
    """The whole body, or BodyError: 413 past `max_bytes` (checked against Content-Length
    before anything is read, then while reading), 408 when it takes longer than `timeout`
    seconds. `limit_name` (RABBITMESH_MAX_EVENT_BYTES, ...) is named in the 413.

    `scan`, if given, sees each chunk as it arrives and may raise to stop reading there (the
    ingress counts a batch's events so: rabbitmesh/ingress/batchcount.py); its exception
    propagates, and the rest of the body is never read (close_after_unread_body)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise BodyError(413, f"body of {length} bytes exceeds {max_bytes} bytes ({limit_name})")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise BodyError(413, f"body exceeds {max_bytes} bytes ({limit_name})")
                parts.append(chunk)
                if scan is not None:
                    scan(chunk)
    except TimeoutError:
        raise BodyError(408, f"request body not received within {timeout:g}s") from None
    body = b"".join(parts)
    # What aiohttp's request.read() keeps, so a later read() (a middleware's) returns these
    # bytes instead of an empty stream.
    request._read_bytes = body
    return body


#: Seconds a connection whose request body was left unread stays open after the answer, no
#: longer read: time for the client to read the answer and close.
DISCARD_SECONDS = 1.0


async def close_after_unread_body(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` hook: an answer given before the request body was read to its
    end (a 413 from Content-Length or past the limit, a batch over its event count, a 401
    before the body) closes the connection, and the server stops reading from it: what the
    client still sends is never received.

    Left to aiohttp, the rest of the body would go through its lingering read (up to 10 s of
    it): parsed as HTTP and handed to the request's stream, megabytes per refused request, which
    under an attack of 4 MiB bodies cost the legitimate senders a third of their throughput.
    Receiving and dropping them unparsed still cost a worker CPU in proportion to the body (2.0
    ms per refused 4 MiB body in all, 8.5 ms per 64 MiB; 1.3 and 1.5 ms now,
    benchmarks/attack_cost.py). Instead, as Go's net/http does, the socket is no longer read at
    all: the client's sending stalls once TCP's windows are full (some hundred KiB), and the
    answer says `Connection: close`. The answer itself still goes out at once (writing does not
    depend on reading), so a client that reads while it sends (browsers, curl, aiohttp, Go) gets
    its 413; after DISCARD_SECONDS the socket is closed, which resets it when the client is
    still sending. A client that reads nothing before its whole body is sent (Python's `urllib`,
    `http.client`, `requests`) sees that reset instead of the 413 when its body is larger than
    the windows: the documented cost of not receiving an attacker's megabytes
    (docs/security.md); the rabbitmesh CLI, a urllib client, says what the reset means.
    """
    if request.body_exists and not request.content.is_eof():
        response.force_close()
        # This hook runs after aiohttp wrote its Connection header value into the headers.
        response.headers["Connection"] = "close"
        protocol = request.protocol
        if isinstance(protocol, RequestHandler):
            # aiohttp's data_received returns before parsing once the handler is closing;
            # the lingering read then waits for bytes that never come, for at most this long.
            protocol.close()
            protocol._lingering_time = min(protocol._lingering_time, DISCARD_SECONDS)
        # What already arrived is let go, so that aiohttp's lingering wait finds nothing to
        # read: reading from the stream would resume the transport (its flow control).
        if request.content.exception() is None:  # else read_nowait raises it
            with contextlib.suppress(RuntimeError):  # a reader still waiting: not ours to drain
                request.content.read_nowait()
        transport = request.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()  # never resumed: the connection ends with this answer


def header_bytes(request: web.Request, name: str) -> bytes:
    """A header's value as sent. aiohttp decodes header bytes as UTF-8 with surrogate
    escapes, so bytes that are not UTF-8 survive here instead of raising
    UnicodeEncodeError (a 500) where a token is compared."""
    return request.headers.get(name, "").encode("utf-8", "surrogateescape")


def bearer_token(request: web.Request) -> bytes | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive, surrounding
    spaces ignored), None when there is none."""
    scheme, _, given = header_bytes(request, "Authorization").partition(b" ")
    token = given.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token
