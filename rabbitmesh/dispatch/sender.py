"""One HTTP delivery attempt and what came of it."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from rabbitmesh.cloudevents import (
    CloudEvent,
    InvalidEvent,
    NotACloudEvent,
    decode_response,
    encode_binary,
    encode_structured,
)
from rabbitmesh.dispatch.policy import is_retryable, parse_retry_after

_SKIP_AUTO = ("Content-Type",)


#: knativeerrorcode of an event rabbitmesh could not even put into an HTTP request (its data
#: cannot be written in the JSON format, say): the event itself is at fault, for good.
UNSENDABLE_CODE = 422

#: What encoding an event for HTTP may raise besides InvalidEvent: data nested too deep for
#: the JSON encoder (RecursionError), values no codec takes (ValueError, TypeError).
ENCODE_ERRORS = (InvalidEvent, RecursionError, ValueError, TypeError)

#: Largest response body read from a subscriber (RABBITMESH_MAX_EVENT_BYTES passes its own):
#: a reply is published as an event, and a huge one was read whole at every attempt (GBs of
#: memory) and then refused by RabbitMQ. Error bodies are cut to it (they are only error data).
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024


class ReplyTooLarge(Exception):
    """The response body is longer than the limit; nothing past the limit was read."""


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The response body, or ReplyTooLarge as soon as it is known to be over `limit` bytes
    (from Content-Length, or while reading: decompressed bytes count, so a gzip bomb stops
    at the limit too)."""
    declared = resp.content_length
    if declared is not None and declared > limit and not resp.headers.get("Content-Encoding"):
        raise ReplyTooLarge(f"reply body is {declared} bytes; at most {limit} are accepted")
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ReplyTooLarge(f"reply body is over {limit} bytes (RABBITMESH_MAX_EVENT_BYTES)")
        parts.append(chunk)
    return b"".join(parts)


async def _read_error_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of an error response: the rest is never read."""
    parts: list[bytes] = []
    size = 0
    while size < limit and (chunk := await resp.content.read(min(_CHUNK, limit - size))):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


@dataclass(slots=True)
class Outcome:
    ok: bool
    status: int  # HTTP status; 0 when there was no response
    body: bytes = b""
    reply: CloudEvent | None = None
    retry_after: float | None = None
    error: str = ""
    #: The event could not be sent at all and never will be (nothing left this process):
    #: not retryable, whatever `status` says.
    unsendable: bool = False

    @property
    def retryable(self) -> bool:
        return not self.unsendable and is_retryable(self.status)

    @property
    def error_code(self) -> int:
        """knativeerrorcode: the HTTP status, 500 when there was no response, 422 when the
        event could not be encoded for HTTP at all."""
        if self.unsendable:
            return UNSENDABLE_CODE
        return self.status or 500


def unsendable(why: str) -> Outcome:
    """An event that can never be sent; `body` (knativeerrordata once base64) says why."""
    return Outcome(False, 0, why.encode(), error=why, unsendable=True)


async def send(
    session: aiohttp.ClientSession,
    url: str,
    event: CloudEvent,
    *,
    namespace: str,
    structured: bool,
    timeout: float | None,
    reply_must_be_event: bool,
    extra_headers: dict[str, str] | None = None,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
) -> Outcome:
    """POST `event` to `url` as Knative's dispatcher does, and classify the response.

    `reply_must_be_event`: a non-empty 2xx body that is not a CloudEvent is a failure
    (Knative's broker answers 502 for it) rather than a success without reply.
    A 2xx body over `max_reply_bytes` is a failed delivery (502, retried, then dead-lettered)
    and is never read whole; an error body is cut to that size.
    """
    try:
        headers, body = encode_structured(event) if structured else encode_binary(event)
    except ENCODE_ERRORS as e:
        mode = "structured (JSON format)" if structured else "binary"
        return unsendable(f"event cannot be encoded in {mode} mode: {_describe(e)}")
    headers["Prefer"] = "reply"
    headers["Kn-Namespace"] = namespace
    if extra_headers:
        headers.update(extra_headers)
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
            # No datacontenttype means no Content-Type, not aiohttp's application/octet-stream.
            skip_auto_headers=_SKIP_AUTO,
        ) as resp:
            status = resp.status
            if not 200 <= status < 300:
                rbody = await _read_error_body(resp, max_reply_bytes)
                return Outcome(
                    False,
                    status,
                    rbody,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    error=f"HTTP {status}",
                )
            try:
                rbody = await read_limited(resp, max_reply_bytes)
            except ReplyTooLarge as e:
                why = f"reply too large: {e}"
                return Outcome(False, 502, why.encode(), error=why)
            try:
                reply = decode_response(status, resp.headers, rbody)
            except ENCODE_ERRORS as e:  # InvalidEvent, or a body no decoder survives
                e = e if isinstance(e, InvalidEvent) else InvalidEvent(_describe(e))
                # A plain body is "no reply" where replies are optional (channels); a reply
                # that claims to be a CloudEvent but breaks the rules (an `id` AMQP cannot
                # carry, say) is the subscriber's failure everywhere, never silently dropped.
                if reply_must_be_event or not isinstance(e, NotACloudEvent):
                    why = f"reply is not a valid CloudEvent: {e}"
                    # knativeerrordata is the response body; an empty one says nothing, so
                    # the reason stands in for it.
                    return Outcome(False, 502, rbody or why.encode(), error=why)
                reply = None
            return Outcome(True, status, rbody, reply=reply)
    except TimeoutError:
        return Outcome(False, 0, error=f"no response within {timeout}s")
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return Outcome(False, 0, error=f"{type(e).__name__}: {e}")


def _describe(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "data nested too deeply to encode"
    return f"{type(e).__name__}: {e}" if not isinstance(e, InvalidEvent) else str(e)
