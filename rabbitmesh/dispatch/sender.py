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
) -> Outcome:
    """POST `event` to `url` as Knative's dispatcher does, and classify the response.

    `reply_must_be_event`: a non-empty 2xx body that is not a CloudEvent is a failure
    (Knative's broker answers 502 for it) rather than a success without reply.
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
            rbody = await resp.read()
            status = resp.status
            if not 200 <= status < 300:
                return Outcome(
                    False,
                    status,
                    rbody,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    error=f"HTTP {status}",
                )
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
