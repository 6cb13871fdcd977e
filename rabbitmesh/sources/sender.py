"""POST a source's CloudEvent to its sink, retrying with capped exponential backoff.

One attempt is `rabbitmesh.dispatch.sender.send` (binary mode, the shared keep-alive
session), so a source's events look exactly like a dispatcher's deliveries. Retried as Knative
retries: no response, timeouts, 404, 408, 409, 429 and 5xx; any other 4xx is final. A 429/503
`Retry-After` stretches the wait (up to the cap). The event stays the same across attempts
(same id), so a sink that dedupes by id sees one event.

Sources publish into a broker only through its HTTP ingress, never straight onto RabbitMQ, so
an event RabbitMQ could not take (attributes over its frame limit, an `id` over 255 bytes, JSON
nested too deep) is refused there with a 4xx naming the limit, like any client's: it is final
(not retried), logged with the sink's reason, and never reaches the shared AMQP connection.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from rabbitmesh.cloudevents import AttributeValue, CloudEvent
from rabbitmesh.dispatch.sender import Outcome, send
from rabbitmesh.timestamps import now_rfc3339

log = logging.getLogger("rabbitmesh.sources")


@dataclass(frozen=True)
class Retry:
    """How long a source keeps trying: `retries` after the first attempt."""

    retries: int = 5
    backoff: float = 0.2  # before the first retry; doubles each time
    max_backoff: float = 10.0
    timeout: float = 30.0  # per attempt

    def delay(self, n: int, retry_after: float | None = None) -> float:
        """Wait before retry n (1, 2, ...)."""
        wait = min(self.backoff * 2 ** (n - 1), self.max_backoff)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


def new_event(
    type_: str,
    source: str,
    *,
    data: bytes | None = None,
    datacontenttype: str | None = None,
    time: str | None = None,
    extensions: dict[str, str] | None = None,
    **attributes: AttributeValue,
) -> CloudEvent:
    """A CloudEvent 1.0 with a fresh id; `extensions` (ceOverrides) are added last."""
    attrs: dict[str, AttributeValue] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": time or now_rfc3339(),
    }
    if datacontenttype:
        attrs["datacontenttype"] = datacontenttype
    attrs.update(attributes)
    for key, value in (extensions or {}).items():
        attrs.setdefault(key, value)
    return CloudEvent(attrs, data)


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    event: CloudEvent,
    *,
    namespace: str,
    what: str,
    retry: Retry = Retry(),
    auth: Callable[[], dict[str, str] | None] | None = None,
) -> Outcome:
    """Send until the sink takes it, a final failure, or the retries run out."""
    attempt = 0
    while True:
        outcome = await send(
            session,
            url,
            event,
            namespace=namespace,
            structured=False,
            timeout=retry.timeout,
            reply_must_be_event=False,
            extra_headers=auth() if auth is not None else None,
        )
        if outcome.ok:
            return outcome
        attempt += 1
        if not outcome.retryable or attempt > retry.retries:
            log.warning(
                "%s: event %s (%s) not delivered to %s after %d attempt(s): %s",
                what,
                event.id,
                event.type,
                url,
                attempt,
                _reason(outcome),
            )
            return outcome
        wait = retry.delay(attempt, outcome.retry_after)
        log.info(
            "%s: sink %s failed (%s); retry %d in %.2fs", what, url, outcome.error, attempt, wait
        )
        await asyncio.sleep(wait)


def _reason(outcome: Outcome) -> str:
    """The failure, with the sink's own explanation when it gave one (rabbitmesh's ingress
    answers `{"error": ...}`), shortened: the body comes from the sink."""
    if not outcome.body:
        return outcome.error
    try:
        detail = orjson.loads(outcome.body)["error"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        detail = outcome.body[:200].decode("utf-8", "replace")
    return f"{outcome.error}: {str(detail)[:300]!r}"
