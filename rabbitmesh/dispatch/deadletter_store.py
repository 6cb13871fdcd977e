"""Dead letters you can see and send again (docs/delivery.md, "Dead-letter store").

Every trigger and subscription may have a dead-letter store, `{queue}:dls`: a RabbitMQ
stream with `x-max-age` = RABBITMESH_DEAD_LETTER_RETENTION, made when its first dead letter
comes. It holds
- events that failed for good with no dead-letter sink (Knative drops them): the queue's
  worker appends them here (confirmed) instead of to the `:dlq`, then acks;
- events the dead-letter sink refused for good (a 4xx it will never take): the sink's worker
  (`deadletters.SinkWorker`) appends them here where it used to park them.

Because the store is a stream, listing reads a copy: it never removes or reorders anything
(it appends an end marker, to know where "now" is; markers are not dead letters).
Redrive and purge cannot delete from a stream either; they append a *tombstone* record naming
the event ids (or "all") it settles, and a listing leaves out every entry that a later
tombstone settled. An event dead-lettered again after a redrive is a new entry after the
tombstone, so it is listed again. Retention drops old entries and tombstones together.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aio_pika.abc import AbstractIncomingMessage

from rabbitmesh import metrics
from rabbitmesh.amqp.client import AmqpClient, PublishFailed
from rabbitmesh.amqp.messages import (
    ATTEMPTS_HEADER,
    RETRIES_HEADER,
    Outgoing,
    raw_message,
    to_message,
)
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.streams import (
    StreamArgumentsDiffer,
    append_marker,
    declare_stream,
    exists,
    read_stream,
)
from rabbitmesh.cloudevents import CloudEvent

log = logging.getLogger("rabbitmesh.deadletters")

#: Messages a listing or redrive holds unread: dead letters may be as large as any event
#: (RABBITMESH_MAX_MESSAGE_BYTES), and the general stream prefetch (500) of 4 MB events was
#: 2 GB held by one listing.
READ_PREFETCH = 8

#: When the event failed for good (milliseconds since the epoch), on every store entry.
DEAD_AT_HEADER = "x-rabbitmesh-dead-at"
#: Why a dead-letter sink refused it, on entries the sink refused.
REASON_HEADER = "x-rabbitmesh-dead-reason"
#: On a tombstone: "redriven" or "purged"; its body is {"ids": [...]} or {"all": true}.
TOMBSTONE_HEADER = "x-rabbitmesh-dls-settled"
#: Headers a redriven event leaves behind: the old attempt's bookkeeping.
_BOOKKEEPING = (
    DEAD_AT_HEADER,
    REASON_HEADER,
    ATTEMPTS_HEADER,
    RETRIES_HEADER,
    "x-stream-offset",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-rabbitmesh-parked-from",
    "x-rabbitmesh-parked-reason",
    "x-rabbitmesh-parked-at",
)
_ERROR_ATTRIBUTES = ("knativeerrordest", "knativeerrorcode", "knativeerrordata")


def retention_arguments(seconds: int) -> dict[str, Any]:
    return {"x-max-age": f"{seconds}s"}


async def declare_store(client: AmqpClient, store: str, retention_seconds: int) -> None:
    """Declare the store; one declared with another retention is kept as it is (a stream's
    arguments cannot change; docs/delivery.md says how to apply a new retention)."""
    try:
        await declare_stream(client, store, retention_arguments(retention_seconds))
    except StreamArgumentsDiffer as e:
        log.warning("dead-letter store %s keeps its earlier retention (%s)", store, e)


def store_copy(msg: StoredMessage, reason: str | None = None) -> Outgoing:
    """A message from a queue, as a store entry (with when, and why if a sink refused it)."""
    headers = dict(msg.headers or {})
    headers.setdefault(DEAD_AT_HEADER, int(time.time() * 1000))
    if reason is not None:
        headers[REASON_HEADER] = reason[:1000]
    return raw_message(msg.body, headers, msg.content_type, msg.message_id)


class StoredMessage(Protocol):
    """What store_copy reads of a message (an aio-pika IncomingMessage has it)."""

    @property
    def headers(self) -> Any: ...
    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...


def store_entry(dead: CloudEvent, extra: dict[str, Any]) -> Outgoing:
    """A dead letter (with its knativeerror* extensions) as a store entry."""
    return to_message(dead, {**extra, DEAD_AT_HEADER: int(time.time() * 1000)})


#: Stores declared by this process. A store is made when its first dead letter comes, not
#: with its trigger: 5,000 quiet triggers must not mean 5,000 streams.
_declared: set[str] = set()


async def keep(
    client: AmqpClient, store: str, retention_seconds: int, message: Outgoing, label: str
) -> None:
    """Append a dead letter to `store` (declared on first use), confirmed. Raises
    PublishFailed or UnpublishableMessage as AmqpClient.publish does."""
    if store not in _declared:
        await declare_store(client, store, retention_seconds)
        _declared.add(store)
    try:
        await client.publish("", store, message, mandatory=True)
    except PublishFailed:
        _declared.discard(store)  # deleted meanwhile (its trigger went and came back)?
        raise
    metrics.dead_letters_kept.labels(label).inc()


KeepDeadLetter = Callable[[str, Outgoing], Awaitable[None]]
"""(queue, store entry) -> appended to that queue's dead-letter store; raises as publish."""


def keeper(client: AmqpClient, names: Names, retention_seconds: int, label: str) -> KeepDeadLetter:
    """What a worker calls to keep a dead letter of `queue` (its own, or a partition's
    parent) in `{queue}:dls`."""

    async def keep_one(queue: str, entry: Outgoing) -> None:
        await keep(client, names.dead_letter_store(queue), retention_seconds, entry, label)

    return keep_one


def forget(store: str) -> None:
    """The store was deleted (with its trigger)."""
    _declared.discard(store)


# --- reading, redrive, purge -----------------------------------------------------------------


@dataclass
class DeadLetter:
    offset: int
    id: str
    type: str | None
    source: str | None
    failed_at: str | None
    error_code: str | None
    error_data: str | None
    attempts: int | None
    reason: str | None

    def summary(self) -> dict[str, Any]:
        """What `rabbitmesh deadletter list -o json` shows of it."""
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "failedAt": self.failed_at,
            "knativeerrorcode": self.error_code,
            "knativeerrordata": self.error_data,
            "attempts": self.attempts,
            "reason": self.reason,
            "offset": self.offset,
        }


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _decoded(data: str | None) -> str | None:
    """knativeerrordata is base64 of the subscriber's response: shown decoded (as text)."""
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        return data


def _entry(offset: int, msg: AbstractIncomingMessage) -> DeadLetter:
    """What a listing keeps of a store entry: its summary, never its body or headers (a
    listing holds every unsettled entry at once; with bodies that was the store's size)."""
    h = dict(msg.headers or {})
    dead_at = h.get(DEAD_AT_HEADER)
    failed = (
        datetime.fromtimestamp(dead_at / 1000, UTC).isoformat(timespec="milliseconds")
        if isinstance(dead_at, int)
        else None
    )
    attempts = h.get(ATTEMPTS_HEADER)
    return DeadLetter(
        offset=offset,
        id=_text(h.get("ce-id")) or _text(msg.message_id) or "",
        type=_text(h.get("ce-type")),
        source=_text(h.get("ce-source")),
        failed_at=failed.replace("+00:00", "Z") if failed else None,
        error_code=_text(h.get("ce-knativeerrorcode")),
        error_data=_decoded(_text(h.get("ce-knativeerrordata"))),
        attempts=attempts if isinstance(attempts, int) and attempts > 0 else None,
        reason=_text(h.get(REASON_HEADER)),
    )


async def list_dead_letters(client: AmqpClient, store: str) -> list[DeadLetter]:
    """The store's unsettled entries, oldest first; reads a snapshot, changes nothing."""
    if not await exists(client, store):
        return []
    entries: list[DeadLetter] = []
    marker = await append_marker(client, store)
    async for offset, msg in read_stream(client, store, "first", marker, READ_PREFETCH):
        settled = (msg.headers or {}).get(TOMBSTONE_HEADER)
        if settled is not None:
            try:
                what = orjson.loads(msg.body)
            except orjson.JSONDecodeError:
                continue
            ids = set(what.get("ids") or [])
            upto = what.get("upto")  # absent in tombstones of earlier versions: by id only
            entries = [
                e for e in entries if e.id not in ids or (isinstance(upto, int) and e.offset > upto)
            ]
            continue
        entries.append(_entry(offset, msg))
    return entries


def _redrive_message(msg: AbstractIncomingMessage, event_id: str) -> Any:
    """The event as it was before it failed: no error extensions, no retry count (a fresh
    retry budget), no bookkeeping headers."""
    headers = {
        k: v
        for k, v in (msg.headers or {}).items()
        if k not in _BOOKKEEPING and k[3:].lower() not in _ERROR_ATTRIBUTES
    }
    return raw_message(msg.body, headers, msg.content_type, event_id)


async def _settle(client: AmqpClient, store: str, how: str, chosen: list[DeadLetter]) -> None:
    # Always by id, also for --all: an entry that arrived after the listing stays listed.
    # `upto` (the newest offset settled): a redriven event that fails again before this
    # tombstone is written is a new entry with a later offset, and stays listed.
    body = orjson.dumps({"ids": [e.id for e in chosen], "upto": max(e.offset for e in chosen)})
    tomb = raw_message(body, {TOMBSTONE_HEADER: how}, "application/json")
    await client.publish("", store, tomb, mandatory=True)


async def redrive(
    client: AmqpClient,
    store: str,
    queue: str,
    ids: list[str] | None,
    to: AmqpClient | None = None,
) -> list[str]:
    """Put the selected entries (every one with `ids` None) back into `queue`, in their
    order, each confirmed; then settle them. At least once: a crash in between sends an
    event twice, never zero times. Returns the ids redriven. `to`: the client of the
    RabbitMQ `queue` is on, when that is not the store's (a broker on another cluster)."""
    entries = await list_dead_letters(client, store)
    wanted = None if ids is None else set(ids)
    chosen = entries if wanted is None else [e for e in entries if e.id in wanted]
    if chosen:
        # A second read publishes each chosen entry as it comes by, so at most one body is
        # held at a time (the listing keeps none).
        by_offset = {e.offset: e for e in chosen}
        marker = await append_marker(client, store)
        async for offset, msg in read_stream(client, store, min(by_offset), marker, READ_PREFETCH):
            entry = by_offset.get(offset)
            if entry is not None:
                message = _redrive_message(msg, entry.id)
                await (to or client).publish("", queue, message, mandatory=True)
    done = [e.id for e in chosen]
    if done:
        await _settle(client, store, "redriven", chosen)
    return done


async def purge(client: AmqpClient, store: str, ids: list[str] | None) -> list[str]:
    """Settle the selected entries (every one with `ids` None) without sending them."""
    entries = await list_dead_letters(client, store)
    wanted = None if ids is None else set(ids)
    chosen = entries if wanted is None else [e for e in entries if e.id in wanted]
    done = [e.id for e in chosen]
    if done:
        await _settle(client, store, "purged", chosen)
    return done
