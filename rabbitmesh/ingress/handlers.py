"""The ingress endpoints. 202 is answered only once RabbitMQ confirmed every event.

Many requests share one confirm channel and each awaits only its own confirms, so
throughput is not bounded by one round trip per event.

Every event of a request is decoded, validated and checked against what RabbitMQ can take
(rabbitmesh/amqp/limits.py) before the first one is published, so a request is refused as a
whole (400/413) or published as a whole: a batch is all-or-nothing for bad input. Large
bodies are decoded in one worker thread, so no request holds the event loop for long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from rabbitmesh import telemetry
from rabbitmesh.amqp.client import BLOCKED_MESSAGE, PublishFailed
from rabbitmesh.amqp.limits import UnpublishableMessage, check_publishable, header_budget
from rabbitmesh.amqp.messages import Outgoing, raw_message, to_message
from rabbitmesh.amqp.publisher import IngressPublisher
from rabbitmesh.auth.gate import Admission
from rabbitmesh.cloudevents import (
    MAX_JSON_DEPTH,
    CloudEvent,
    InvalidEvent,
    OverLimit,
    decode_request,
    encode_structured,
)
from rabbitmesh.cloudevents.contenttype import event_format
from rabbitmesh.cloudevents.jsonformat import batch_over_limit, cut_batch_too_long
from rabbitmesh.dataplane import Target, stamp_broker_ingress
from rabbitmesh.filters.bindings import routing_key_for_type
from rabbitmesh.hosted import exchange_kinds
from rabbitmesh.http_input import BodyError, read_body
from rabbitmesh.ingress.auth import unauthorized
from rabbitmesh.ingress.batchcount import BatchCounter, BatchTooLong
from rabbitmesh.metrics import (
    bounded_type,
    code_class,
    ingress_events,
    ingress_request_bytes,
    unrouted,
)

log = logging.getLogger("rabbitmesh.ingress")

ALLOW = "POST, OPTIONS"

#: Bodies up to this size are decoded on the event loop (well under a millisecond); larger
#: ones in the decode thread. Parsing and validating a 4 MiB batch takes tens of
#: milliseconds of CPU: on the loop, every other request would wait that long.
INLINE_DECODE_BYTES = 16 * 1024
#: An over-long batch's prefix (rabbitmesh/ingress/batchcount.py) up to this size is first
#: checked on the loop by one orjson call (~0.3 ms for 64 KiB): the usual answer, 413, then
#: costs no trip to the decode thread, whose hand-over of the GIL cost more than the parse.
INLINE_CUT_BYTES = 128 * 1024
_decode_thread: ThreadPoolExecutor | None = None


def decode_executor() -> ThreadPoolExecutor:
    """The one thread large bodies are decoded in, shared by every Ingress of the process.

    One, not a pool: decoding is CPU work that holds the GIL most of the time (orjson does
    not release it), so more threads would only take more turns from the event loop; with
    one, the loop waits at most for one parse step at a time.
    """
    global _decode_thread
    if _decode_thread is None:
        _decode_thread = ThreadPoolExecutor(1, thread_name_prefix="rabbitmesh-decode")
    return _decode_thread


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class Ingress:
    def __init__(
        self,
        publisher: IngressPublisher,
        lookup: Callable[[str, str, str], Target | None],
        ready: Callable[[], bool],
        max_event_bytes: int,
        retry_after: int,
        max_batch_events: int = 1000,
        max_inflight: int = 4096,
        request_timeout: float = 30.0,
        not_ready: Callable[[str, str, str], str | None] | None = None,
        max_json_depth: int = MAX_JSON_DEPTH,
    ) -> None:
        self.publisher = publisher
        self.lookup = lookup  # (kind, namespace, name) -> Target, None when unknown
        self.ready = ready  # False until the resources are known: answer 503, not 404
        self.max_event_bytes = max_event_bytes
        self.retry_after = str(retry_after)
        self.max_batch_events = max_batch_events
        self.max_inflight = max_inflight
        self.request_timeout = request_timeout
        self.max_json_depth = max_json_depth
        self.inflight = 0  # events published and awaiting their confirm
        #: (kind, namespace, name) -> why a resource without a target is not Ready, None
        #: when it does not exist: "exists but not Ready" is 503, not "not found".
        self.not_ready = not_ready

    def routes(self) -> list[web.RouteDef]:
        """One route per hosted kind with an exchange (rabbitmesh/hosted.py; a RabbitmqSink's
        is in its spec), in the table's order; endpoint kinds (EventTransform, RequestReply)
        have handlers of their own."""
        return [web.route("*", k.path, self._for(k.kind)) for k in exchange_kinds()]

    def _for(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.handle(kind, request)

        handler.__name__ = f"ingress_{kind.lower()}"
        return handler

    async def handle(self, kind: str, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        target = self.lookup(kind, ns, name)  # once per request: it is on the hot path
        response, events = await self._handle(kind, request, target)
        status = code_class(response.status)
        if target is None:
            ns = name = ""  # unknown paths must not grow the label set
        if events:
            for ev in events:
                ingress_events.labels(kind, ns, name, bounded_type(ev.type), status).inc()
        elif request.method == "POST":
            ingress_events.labels(kind, ns, name, "", status).inc()
        return response

    async def _handle(
        self, kind: str, request: web.Request, target: Target | None
    ) -> tuple[web.StreamResponse, list[CloudEvent]]:
        """The response, and the events it concerns (for the metrics)."""
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": ALLOW}), []
        if request.method != "POST":
            return error(405, f"method {request.method} not allowed", Allow=ALLOW), []
        if target is None:
            ns, name = request.match_info["namespace"], request.match_info["name"]
            if not self.ready():
                return error(
                    503,
                    "starting up: resources not loaded yet",
                    **{"Retry-After": self.retry_after},
                ), []
            why = self.not_ready(kind, ns, name) if self.not_ready is not None else None
            if why is not None:  # 503 as for a broker still starting (docs/troubleshooting.md)
                return error(503, why, **{"Retry-After": self.retry_after}), []
            return error(404, f"{kind} {ns}/{name} not found"), []
        if target.tokens is not None:  # checked before the body is read
            denied = unauthorized(request, target.tokens)
            if denied is not None:
                return denied, []
        admission: Admission | None = None
        if target.authorize is not None:  # also before the body is read
            decided = await target.authorize(request)
            if isinstance(decided, web.StreamResponse):
                return decided, []
            admission = decided
        too_large = self._attribute_headers_too_large(request)
        if too_large is not None:
            return error(413, too_large), []
        counter = self._batch_counter(request)
        try:
            body = await read_body(
                request,
                self.max_event_bytes,
                self.request_timeout,
                limit_name="RABBITMESH_MAX_EVENT_BYTES",
                scan=counter.feed if counter is not None else None,
            )
        except BodyError as e:
            return error(e.status, e.message), []
        except BatchTooLong as e:
            # Only the prefix was read: decoding it refuses the batch as the whole body would
            # (413 at item max_batch_events + 1, or 400 for a broken item before it).
            body = e.prefix
        ingress_request_bytes.labels(kind).observe(len(body))
        if (
            counter is not None
            and counter.stopped
            and self._surely_too_long(request, counter, body)
        ):
            return error(413, str(batch_over_limit(self.max_batch_events))), []
        publisher = target.publisher or self.publisher
        try:
            prepared = await self._prepare(request.headers, body, target, publisher.frame_max)
            if counter is not None and counter.stopped:  # cannot happen with valid JSON
                raise batch_over_limit(self.max_batch_events)
        except OverLimit as e:
            return error(413, str(e)), []
        except InvalidEvent as e:
            return error(400, str(e)), []
        except UnpublishableMessage as e:
            return error(e.status, str(e)), []
        events = [event for event, _, _ in prepared]
        if admission is not None and admission.policies is not None:
            for event in events:  # a request is refused as a whole, as for bad input
                refused = admission.refusal(event.attributes)
                if refused is not None:
                    return error(403, refused), events
        if self.inflight + len(events) > self.max_inflight:
            return error(
                503,
                f"too many events awaiting RabbitMQ's confirm (limit {self.max_inflight})",
                **{"Retry-After": self.retry_after},
            ), events
        if not publisher.connected:
            return error(
                503, "RabbitMQ is unavailable", **{"Retry-After": self.retry_after}
            ), events
        if publisher.blocked:  # a publish would hang until the alarm clears
            return error(503, BLOCKED_MESSAGE, **{"Retry-After": self.retry_after}), events
        self.inflight += len(events)
        try:
            if len(prepared) == 1:
                await self._publish(publisher, target, *prepared[0])
            elif prepared:
                await asyncio.gather(*(self._publish(publisher, target, *one) for one in prepared))
        except PublishFailed as e:
            log.warning("publish to %s failed: %s", target.exchange, e)
            return error(
                503, f"event not accepted: {e}", **{"Retry-After": self.retry_after}
            ), events
        except UnpublishableMessage as e:  # only if frame_max shrank since _prepare checked
            return error(e.status, str(e)), events
        finally:
            self.inflight -= len(events)
        return web.Response(status=202), events

    def _batch_counter(self, request: web.Request) -> BatchCounter | None:
        """A counter for a batch's events while it is read (None for other requests): an
        over-long batch is refused after its first max_batch_events + 1 items, instead of
        after megabytes were received."""
        try:
            batch = event_format(request.headers.get("Content-Type")) == "batch"
        except InvalidEvent:  # refused with its reason once the body is read
            return None
        return BatchCounter(self.max_batch_events) if batch else None

    def _surely_too_long(self, request: web.Request, counter: BatchCounter, prefix: bytes) -> bool:
        """Whether the prefix an over-long batch was cut at gets 413 for its length: decided
        on the loop when that is cheap, else (False) the prefix is decoded as usual."""
        if len(prefix) > INLINE_CUT_BYTES:
            return False
        # Two Content-Types are a 400 of their own (decode_request), whatever the body.
        if len(request.headers.getall("Content-Type", ())) != 1:
            return False
        # The counter saw how deep the prefix nests at most: no depth walk when shallow.
        shallow = counter.max_nesting <= self.max_json_depth
        return cut_batch_too_long(
            prefix, self.max_batch_events, None if shallow else self.max_json_depth
        )

    def _attribute_headers_too_large(self, request: web.Request) -> str | None:
        """Binary-mode attributes that can never fit RabbitMQ's frame, refused before the
        body is read or anything decoded: each becomes an AMQP header at least as large as
        its HTTP header, so this is cheap and never refuses what would fit. Repeated at full
        speed, the full decode-then-refuse path cost an attacker's victims a core."""
        size = 0
        largest, largest_size = b"", -1
        for name, value in request.raw_headers:
            if name[:3].lower() == b"ce-":
                size += len(name) + len(value)
                if len(value) > largest_size:
                    largest, largest_size = name, len(value)
        budget = header_budget(self.publisher.frame_max)
        if size <= budget:
            return None
        return (
            f"the event's attributes take {size} bytes as ce- headers; RabbitMQ's frame limit "
            f"allows at most {budget} for them as AMQP headers (largest: "
            f"'{largest.decode('latin-1').lower()}')"
        )

    async def _prepare(
        self, headers: Mapping[str, str], body: bytes, target: Target, frame_max: int
    ) -> list[tuple[CloudEvent, Outgoing, str]]:
        """Decode the request's events and build their messages and routing keys, off the
        loop when large.

        Raises InvalidEvent (400), OverLimit (413) or UnpublishableMessage (its status).
        """
        if len(body) <= INLINE_DECODE_BYTES:
            return self._prepare_sync(headers, body, target, frame_max)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            decode_executor(), self._prepare_sync, headers, body, target, frame_max
        )

    def _prepare_sync(
        self, headers: Mapping[str, str], body: bytes, target: Target, frame_max: int
    ) -> list[tuple[CloudEvent, Outgoing, str]]:
        events = decode_request(
            headers, body, max_events=self.max_batch_events, max_depth=self.max_json_depth
        )
        prepared = []
        for event in events:
            if target.is_broker:
                stamp_broker_ingress(event)
            message = message_for(event, target.structured)
            key = (target.routing_key or _type_key)(event)
            # Every event is checked before any is published: nothing of a request that
            # RabbitMQ would refuse (by closing the shared connection) reaches it.
            check_publishable(message.properties, frame_max)
            prepared.append((event, message, key))
        return prepared

    async def _publish(
        self,
        publisher: IngressPublisher,
        target: Target,
        event: CloudEvent,
        message: Outgoing,
        key: str,
    ) -> None:
        with telemetry.span(
            event, operation="publish", destination=target.exchange, kind="producer"
        ):
            if telemetry.enabled():  # the span gave the event its own trace context
                message = message_for(event, target.structured)
            routed = await publisher.publish(
                target.exchange,
                key,
                message,
                mandatory=True,
                unroutable_ok=target.unroutable_ok,
            )
        if not routed:
            unrouted.labels(target.exchange).inc()


def _type_key(event: CloudEvent) -> str:
    return routing_key_for_type(event.type)


def message_for(event: CloudEvent, structured: bool) -> Outgoing:
    """The AMQP message of `event`: the binary binding, or the JSON format."""
    if not structured:
        return to_message(event)
    headers, body = encode_structured(event)
    return raw_message(
        body,
        {k: v for k, v in headers.items() if k != "content-type"},
        content_type=headers["content-type"],
        message_id=event.id,
    )
