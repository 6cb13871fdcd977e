"""The console's live tail: `POST /console/api/tail` streams the events a Broker, Channel or
Trigger sees, as JSON lines, without touching their delivery.

Each tail binds a queue of its own to the same exchange, with the same binding keys a
Trigger would have (RabbitMQ copies each event to every bound queue, so the trigger's queue
is untouched), and deletes it when the request ends. The queue is exclusive and auto-delete,
so RabbitMQ removes it anyway when rabbitmesh's connection or the channel goes.

A tail is not a way to load rabbitmesh or RabbitMQ (docs/security.md):
- it is opened with POST and the admin API's change checks (`check_mutation`: no other
  site, the token or loopback, a JSON body), because it shows event data, which reads of
  the admin API never do, and it creates a queue;
- at most RABBITMESH_CONSOLE_MAX_TAILS run at once (429 beyond);
- RabbitMQ keeps at most TAIL_BACKLOG waiting events per tail (`x-max-length`, the oldest
  dropped first), rabbitmesh holds at most TAIL_PREFETCH unacknowledged ones, reads at most
  SCAN_RATE a second, and sends at most RABBITMESH_CONSOLE_TAIL_RATE a second to the browser:
  the rest are counted as skipped and reported in the stats lines;
- event data over DATA_LIMIT bytes is cut.

Lines: `{"type": "started", ...}`, then `{"type": "event", "event": {...}}` per event (the
CloudEvents JSON format, `data` decoded when it is JSON or text) and every STATS_SECONDS
`{"type": "stats", "scanned", "matched", "shown", "skipped"}` (which also notices a closed
page).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiormq
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from aiohttp import web

from rabbitmesh.amqp.names import Names
from rabbitmesh.api.errors import ApiError
from rabbitmesh.cloudevents import InvalidEvent, decode_amqp
from rabbitmesh.cloudevents.jsonformat import event_to_json
from rabbitmesh.filters import EventFilter, FilterError, binding_keys, compile_trigger_filter
from rabbitmesh.http_input import BodyError, read_body
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.eventing import Trigger

log = logging.getLogger("rabbitmesh.console")

#: Events RabbitMQ keeps waiting for one tail; older ones are dropped first.
TAIL_BACKLOG = 200
#: Unacknowledged events rabbitmesh holds for one tail.
TAIL_PREFETCH = 20
#: Events one tail reads (and filters) per second at most; the rest wait in (and fall out of)
#: its bounded queue, so a busy broker costs rabbitmesh at most this much work per tail.
SCAN_RATE = 500.0
STATS_SECONDS = 2.0
CHECK_SECONDS = 0.25
#: Opening the channel, declaring and binding the queue: longer is a 503.
SETUP_SECONDS = 10.0
#: Bytes of `data` (as JSON text) sent to the browser per event.
DATA_LIMIT = 64 * 1024
#: Largest request body (the target and the CESQL filter).
MAX_BODY = 16 * 1024
MAX_FILTER_CHARS = 4096
KINDS = ("Broker", "Channel", "Trigger")

ChannelFactory = Callable[[int], Awaitable[AbstractRobustChannel]]


@dataclass
class Target:
    """What a tail binds to, and what it shows of it."""

    exchange: str
    keys: list[str]
    match: EventFilter | None  # None: everything the bindings bring
    described: str


@dataclass
class Counts:
    scanned: int = 0
    matched: int = 0
    shown: int = 0
    skipped: int = 0
    undecodable: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> bytes:
        return _line(
            {
                "type": "stats",
                "scanned": self.scanned,
                "matched": self.matched,
                "shown": self.shown,
                "skipped": self.skipped,
                "undecodable": self.undecodable,
            }
        )


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


class Bucket:
    """Token bucket: `take()` is True at most `rate` times a second (burst: one second's)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


def parse_request(raw: bytes) -> tuple[str, str, str, str | None]:
    """(kind, namespace, name, filter) from the JSON body, or 400/422 naming the field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    problems: list[dict[str, Any]] = []
    kind = body.get("kind")
    if kind not in KINDS:
        problems.append({"field": "kind", "message": f"must be one of {', '.join(KINDS)}"})
    for name in ("namespace", "name"):
        value = body.get(name)
        if not isinstance(value, str) or not value or len(value) > 253:
            problems.append({"field": name, "message": "must be a name (1-253 characters)"})
    expr = body.get("filter")
    if expr is not None and not isinstance(expr, str):
        problems.append({"field": "filter", "message": "must be a CESQL expression (a string)"})
    elif isinstance(expr, str) and len(expr) > MAX_FILTER_CHARS:
        problems.append({"field": "filter", "message": f"longer than {MAX_FILTER_CHARS} chars"})
    if problems:
        first = problems[0]
        raise ApiError(422, f"invalid tail: {first['field']}: {first['message']}", details=problems)
    return str(kind), str(body["namespace"]), str(body["name"]), (expr or "").strip() or None


def user_filter(expr: str | None) -> tuple[EventFilter | None, list[str]]:
    """The page's CESQL expression compiled, and the binding keys that narrow it."""
    if expr is None:
        return None, ["#"]
    try:
        filters = [{"cesql": expr}]
        return compile_trigger_filter(None, filters), binding_keys(None, filters)
    except FilterError as e:
        message = str(e).split(": ", 1)[-1]
        raise ApiError(
            422,
            f"invalid tail: filter: {message}",
            details=[{"field": "filter", "message": message}],
        ) from None


def target_of(
    names: Names,
    resource: Callable[[str, str, str], Resource | None],
    kind: str,
    namespace: str,
    name: str,
    expr: str | None,
) -> Target:
    match, keys = user_filter(expr)
    res = resource(kind, namespace, name)
    if res is None:
        raise ApiError(404, f"{kind} {name!r} not found in namespace {namespace!r}")
    if kind == "Broker":
        exchange = names.broker_exchange(namespace, name)
        return Target(exchange, keys, match, f"Broker {namespace}/{name}")
    if kind == "Channel":
        # A fanout exchange: the routing key means nothing, one binding takes everything.
        exchange = names.channel_exchange(namespace, name)
        return Target(exchange, [""], match, f"Channel {namespace}/{name}")
    assert isinstance(res, Trigger)
    spec = res.spec
    attrs = spec.filter.attributes if spec.filter else {}
    trigger_filter = compile_trigger_filter(attrs, spec.filters)
    both = trigger_filter if match is None else _All(trigger_filter, match)
    exchange = names.broker_exchange(namespace, spec.broker)
    # The trigger's own bindings: the tail sees what its queue gets, before its filter.
    return Target(exchange, binding_keys(attrs, spec.filters), both, f"Trigger {namespace}/{name}")


class _All:
    """Both filters (the trigger's and the page's)."""

    def __init__(self, *parts: EventFilter) -> None:
        self.parts = parts

    def matches(self, attributes: Any) -> bool:
        return all(p.matches(attributes) for p in self.parts)


def shown_event(msg: AbstractIncomingMessage, match: EventFilter | Any | None) -> dict | None:
    """The event as the page shows it; None when the filter drops it. InvalidEvent for a
    message that is not a CloudEvent."""
    event = decode_amqp(msg.headers or {}, msg.body, msg.content_type)
    if match is not None and not match.matches(event.attributes):
        return None
    obj = event_to_json(event)
    for key in ("data", "data_base64"):
        if key in obj:
            size = len(orjson.dumps(obj[key]))
            if size > DATA_LIMIT:
                obj[key] = f"<{size} bytes, not shown: over the console's {DATA_LIMIT}-byte limit>"
                obj["rabbitmeshconsoletruncated"] = True
    return obj


class Tails:
    """The tails running in this process (at most `max_tails`)."""

    def __init__(
        self,
        names: Names,
        channel: ChannelFactory,
        resource: Callable[[], Callable[[str, str, str], Resource | None]],
        *,
        max_tails: int,
        rate: float,
        request_timeout: float,
    ) -> None:
        self.names = names
        self._channel = channel
        self._resource = resource
        self.max_tails = max_tails
        self.rate = rate
        self.request_timeout = request_timeout
        self.active = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The caller ran check_mutation already."""
        try:
            raw = await read_body(
                request, MAX_BODY, self.request_timeout, limit_name="the console's 16 KiB"
            )
        except BodyError as e:
            raise ApiError(e.status, e.message) from None
        kind, namespace, name, expr = parse_request(raw)
        target = target_of(self.names, self._resource(), kind, namespace, name, expr)
        if self.active >= self.max_tails:
            raise ApiError(
                429,
                f"{self.active} tails are open, RABBITMESH_CONSOLE_MAX_TAILS is {self.max_tails}: "
                "close one (another page or tab) and try again",
                reason="TooManyRequests",
                headers={"Retry-After": "5"},
            )
        self.active += 1  # before the first await: two requests cannot both take the last slot
        try:
            return await self._run(request, target, expr)
        finally:
            self.active -= 1

    async def _run(
        self, request: web.Request, target: Target, expr: str | None
    ) -> web.StreamResponse:
        queue_name = f"{self.names.prefix}.console-tail.{uuid.uuid4().hex}"
        try:
            async with asyncio.timeout(SETUP_SECONDS):
                channel = await self._channel(TAIL_PREFETCH)
        except Exception as e:  # RabbitMQ not there: say so, as other endpoints do
            raise ApiError(
                503, f"cannot open a channel to RabbitMQ: {e or type(e).__name__}"
            ) from None
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue(TAIL_PREFETCH)
        tag: str | None = None
        try:
            try:
                async with asyncio.timeout(SETUP_SECONDS):
                    queue = await self._declare(channel, queue_name, target)
            except TimeoutError:
                raise ApiError(503, "RabbitMQ did not declare the tail's queue in time") from None
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise ApiError(
                    409,
                    f"{target.described} has no exchange yet (not Ready?): nothing to tail",
                ) from None
            # The prefetch bounds `inbox`: RabbitMQ sends no more until we acknowledge.
            tag = await queue.consume(inbox.put, no_ack=False)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/x-ndjson",
                    "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff",
                    "Cross-Origin-Resource-Policy": "same-origin",
                }
            )
            await response.prepare(request)
            log.info("console: tail of %s opened", target.described)
            with contextlib.suppress(ConnectionResetError, ConnectionError):
                await response.write(
                    _line(
                        {
                            "type": "started",
                            "target": target.described,
                            "filter": expr,
                            "rate": self.rate,
                            "backlog": TAIL_BACKLOG,
                        }
                    )
                )
                await self._pump(request, response, inbox, target)
            return response
        finally:
            if tag is not None:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue_name)
            with contextlib.suppress(Exception):
                await channel.close()
            log.info("console: tail of %s closed", target.described)

    async def _declare(
        self, channel: AbstractRobustChannel, queue_name: str, target: Target
    ) -> AbstractRobustQueue:
        queue = await channel.declare_queue(
            queue_name,
            durable=False,
            exclusive=True,
            auto_delete=True,
            arguments={
                "x-max-length": TAIL_BACKLOG,
                "x-overflow": "drop-head",
                "x-queue-type": "classic",
            },
        )
        for key in target.keys:
            await queue.bind(target.exchange, key)
        return queue

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        inbox: asyncio.Queue[AbstractIncomingMessage],
        target: Target,
    ) -> None:
        counts = Counts()
        show = Bucket(self.rate)
        scan = Bucket(SCAN_RATE)
        next_stats = time.monotonic() + STATS_SECONDS
        while True:
            # aiohttp does not cancel a handler whose client left: look at the connection
            # every CHECK_SECONDS, so a closed page frees its slot and queue at once.
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            wait = max(0.0, min(CHECK_SECONDS, next_stats - time.monotonic()))
            try:
                msg = await asyncio.wait_for(inbox.get(), wait)
            except TimeoutError:
                msg = None
            if time.monotonic() >= next_stats:
                await response.write(counts.line())  # raises once the page is gone
                next_stats = time.monotonic() + STATS_SECONDS
            if msg is None:
                continue
            # Pacing, not synchronisation: hold the read rate to SCAN_RATE; what comes faster
            # waits in (and falls out of the head of) the bounded queue.
            pause = scan.wait_time()
            if pause:
                await asyncio.sleep(pause)
            scan.take()
            counts.scanned += 1
            try:
                obj = shown_event(msg, target.match)
            except (InvalidEvent, RecursionError, ValueError, TypeError):
                counts.undecodable += 1
                obj = None
            with contextlib.suppress(Exception):
                await msg.ack()
            if obj is None:
                continue
            counts.matched += 1
            if not show.take():
                counts.skipped += 1
                continue
            counts.shown += 1
            await response.write(_line({"type": "event", "event": obj}))
