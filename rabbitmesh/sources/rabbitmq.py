"""RabbitmqSource: the messages of a RabbitMQ queue, delivered to a sink as CloudEvents.

- The queue (`rabbitmqResourcesConfig.queueName`) is on rabbitmesh's own RabbitMQ or on the
  one a `connectionSecret` names (rabbitmesh/amqp/remote.py). Not `predeclared`: rabbitmesh
  declares it durable and, with an `exchangeName`, declares that exchange (durable topic) if it
  does not exist and binds the queue to it with `#`. `predeclared: true`: the queue is used as
  it is and nothing is declared; while it does not exist the source is not Ready.
- Consumed with prefetch = `parallelism`: at most that many messages in flight, so 1 is FIFO.
- A message that already is a CloudEvent in the AMQP binding (ce- headers, or a structured
  content type) passes through unchanged; any other becomes an event of type
  `dev.knative.rabbitmq.event` (`to_event`). `ceOverrides` extensions are added to both.
- Delivery follows `spec.delivery` as a Trigger's would (retries, backoff, timeout, with the
  configured defaults); after the last failure the event goes to `deadLetterSink` (retried
  until it takes it), or, without one, the message is rejected without requeue, so the queue's
  own dead-lettering (`x-dead-letter-exchange`) catches it if the owner set one up.
- The message is acked only after the sink (or the dead-letter sink) accepted the event, or
  it was rejected as above: if rabbitmesh dies meanwhile, RabbitMQ delivers it again.
  Retries wait in memory while the message stays unacked (the queue may belong to someone
  else, so no delay queues are added there); prefetch bounds how many wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from rabbitmesh.amqp.client import redact
from rabbitmesh.amqp.remote import Cluster
from rabbitmesh.cloudevents import (
    AttributeValue,
    CloudEvent,
    InvalidEvent,
    NotACloudEvent,
    decode_amqp,
    validate,
)
from rabbitmesh.dispatch.policy import DeliveryPolicy
from rabbitmesh.dispatch.sender import Outcome, send
from rabbitmesh.resources.bridges import RABBITMQ_TYPE, RabbitmqSource
from rabbitmesh.sources.manager import Plan, Runtime
from rabbitmesh.timestamps import now_rfc3339, rfc3339

log = logging.getLogger("rabbitmesh.sources")

#: knativeerrordata is at most this long (base64), as the dispatcher's.
ERROR_DATA_LIMIT = 1024
#: The dead-letter sink is retried until it takes the event, at most this far apart.
DEAD_LETTER_MAX_BACKOFF = 60.0
#: Waits between attempts to reach the RabbitMQ at start.
CONNECT_BACKOFF = (0.5, 10.0)

#: AMQP properties -> the extension each becomes on a converted message (docs/sources.md).
PROPERTY_EXTENSIONS = {
    "exchange": "rabbitmqexchange",
    "routing_key": "rabbitmqroutingkey",
    "correlation_id": "rabbitmqcorrelationid",
    "reply_to": "rabbitmqreplyto",
    "app_id": "rabbitmqappid",
    "user_id": "rabbitmquserid",
    "type": "rabbitmqtype",
    "priority": "rabbitmqpriority",
    "content_encoding": "rabbitmqcontentencoding",
}
#: Prefix of the extension a message header becomes (`X-Order-Id` -> `rabbitmqxorderid`).
HEADER_PREFIX = "rabbitmq"

#: Headers is how a caller adds `Authorization` (sender identity) to each request.
Headers = Callable[[], dict[str, str] | None]


def plan(
    source: RabbitmqSource,
    sink: str,
    cluster: Cluster,
    policy: DeliveryPolicy,
    auth: Headers | None = None,
) -> Plan:
    return Plan(
        key=source.key,
        what=f"RabbitmqSource {source.namespace}/{source.name}",
        fingerprint=(source.spec.dump(), sink, cluster, policy),
        work=lambda rt: run(source, sink, cluster, policy, rt, auth),
    )


# --- message -> CloudEvent ---------------------------------------------------------------


def _scalar(value: Any) -> AttributeValue | None:
    """A header value as an attribute value; None for what an extension cannot hold."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode()
    if isinstance(value, datetime):
        return rfc3339(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, Decimal | float):
        return str(value)
    return None  # tables, arrays, void: no CloudEvents type holds them


def _extension_name(header: str) -> str:
    return HEADER_PREFIX + "".join(c for c in header.lower() if c.isascii() and c.isalnum())


def to_event(
    source: RabbitmqSource,
    body: bytes,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any],
) -> CloudEvent:
    """The CloudEvent for one message (`properties`: content_type, message_id, timestamp and
    the PROPERTY_EXTENSIONS names). Raises InvalidEvent for a message that claims to be a
    CloudEvent but breaks the rules."""
    content_type = properties.get("content_type")
    try:
        event = decode_amqp(headers, body, content_type)
    except NotACloudEvent:
        event = _convert(source, body, headers, properties)
    for key, value in source.extensions.items():
        event.attributes[key] = value
    return event


def _convert(
    source: RabbitmqSource,
    body: bytes,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any],
) -> CloudEvent:
    message_id = properties.get("message_id")
    stamp = properties.get("timestamp")
    attrs: dict[str, AttributeValue] = {
        "specversion": "1.0",
        "id": message_id or str(uuid.uuid4()),
        "source": source.ce_source,
        "type": RABBITMQ_TYPE,
        "time": _scalar(stamp) if isinstance(stamp, datetime) else now_rfc3339(),  # type: ignore[dict-item]
    }
    content_type = properties.get("content_type")
    if content_type:
        attrs["datacontenttype"] = content_type
    for prop, ext in PROPERTY_EXTENSIONS.items():
        value = properties.get(prop)
        if value not in (None, ""):
            attrs[ext] = value if isinstance(value, int) else str(value)
    for name, raw in (headers or {}).items():
        ext = _extension_name(name)
        value = _scalar(raw)
        if ext == HEADER_PREFIX or value is None or ext in attrs:
            continue  # first one wins when two headers differ only in punctuation or case
        attrs[ext] = value
    validate(attrs)
    return CloudEvent(attrs, body or None)


def _properties(msg: AbstractIncomingMessage) -> dict[str, Any]:
    return {
        "content_type": msg.content_type,
        "message_id": msg.message_id,
        "timestamp": msg.timestamp,
        "exchange": msg.exchange,
        "routing_key": msg.routing_key,
        "correlation_id": msg.correlation_id,
        "reply_to": msg.reply_to,
        "app_id": msg.app_id,
        "user_id": msg.user_id,
        "type": msg.type,
        "priority": msg.priority,
        "content_encoding": msg.content_encoding,
    }


# --- running --------------------------------------------------------------------------


async def connect(cluster: Cluster, rt: Runtime) -> AbstractRobustConnection:
    """Connect, reporting `RabbitmqUnavailable` and retrying with backoff until it works."""
    delay = CONNECT_BACKOFF[0]
    while True:
        try:
            conn = await aio_pika.connect_robust(
                cluster.url,
                reconnect_interval=1.0,
                client_properties={"connection_name": f"rabbitmesh-{rt.what}"},
            )
            return conn
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
            why = f"cannot connect to RabbitMQ at {cluster.display}: {e or type(e).__name__}"
            rt.report(("RabbitmqUnavailable", why))
            log.warning("%s: %s; retrying in %.1fs", rt.what, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_BACKOFF[1])


async def prepare_queue(
    conn: AbstractRobustConnection, source: RabbitmqSource, rt: Runtime
) -> AbstractQueue:
    """The queue to consume, declared (and bound) unless predeclared; waits, reporting
    `QueueNotFound`, while a predeclared queue does not exist."""
    cfg = source.spec.rabbitmq_resources_config
    delay = CONNECT_BACKOFF[0]
    while True:
        channel = await conn.channel()
        try:
            if cfg.predeclared:
                return await channel.declare_queue(cfg.queue_name, passive=True)
            queue = await channel.declare_queue(cfg.queue_name, durable=True)
            if cfg.exchange_name:
                exchange = await _exchange(conn, channel, cfg.exchange_name)
                await queue.bind(exchange, routing_key="#")
            return queue
        except aio_pika.exceptions.ChannelClosed as e:
            # The queue (or exchange) is missing, or exists with other arguments.
            reason = "QueueNotFound" if cfg.predeclared else "QueueDeclareFailed"
            rt.report((reason, f"queue {cfg.queue_name!r}: {e}"))
            log.warning("%s: queue %r not usable (%s); retrying", rt.what, cfg.queue_name, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_BACKOFF[1])


async def _exchange(conn: AbstractRobustConnection, channel: Any, name: str) -> Any:
    """An existing exchange as it is, else a new durable topic exchange. Probed on a channel
    of its own: a passive declare of a missing exchange closes the channel."""
    probe = await conn.channel()
    try:
        return await probe.declare_exchange(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    finally:
        if not probe.is_closed:
            with contextlib.suppress(Exception):
                await probe.close()


async def run(
    source: RabbitmqSource,
    sink: str,
    cluster: Cluster,
    policy: DeliveryPolicy,
    rt: Runtime,
    auth: Headers | None = None,
) -> None:
    cfg = source.spec.rabbitmq_resources_config
    conn = await connect(cluster, rt)
    handling: set[asyncio.Task[None]] = set()
    try:
        queue = await prepare_queue(conn, source, rt)
        channel = queue.channel
        await channel.set_qos(prefetch_count=cfg.parallelism)
        bridge = _Bridge(source, sink, policy, rt, auth)

        async def arrived(msg: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(bridge.handle(msg))
            handling.add(task)
            task.add_done_callback(handling.discard)

        await queue.consume(arrived)
        rt.status["queue"] = cfg.queue_name
        rt.report(None)
        rt.changed()
        log.info(
            "%s: consuming queue %r on %s (parallelism %d)",
            rt.what,
            cfg.queue_name,
            redact(cluster.url),
            cfg.parallelism,
        )
        await asyncio.Future()  # until cancelled
    finally:
        for task in handling:
            task.cancel()  # unacked messages go back to the queue when the channel closes
        with contextlib.suppress(Exception):
            await conn.close()


class _Bridge:
    def __init__(
        self,
        source: RabbitmqSource,
        sink: str,
        policy: DeliveryPolicy,
        rt: Runtime,
        auth: Headers | None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.policy = policy
        self.rt = rt
        self.auth = auth

    async def handle(self, msg: AbstractIncomingMessage) -> None:
        try:
            event = to_event(self.source, msg.body, msg.headers, _properties(msg))
        except InvalidEvent as e:
            log.warning(
                "%s: message %s is not a valid CloudEvent (%s); rejected without requeue",
                self.rt.what,
                msg.message_id or msg.delivery_tag,
                e,
            )
            await _settle(msg.reject(requeue=False))
            return
        outcome = await self._deliver(self.sink, event, self.policy)
        if outcome.ok:
            await _settle(msg.ack())
            return
        if self.policy.dead_letter_url is not None:
            dead = event.copy()
            dead.attributes["knativeerrordest"] = self.sink
            dead.attributes["knativeerrorcode"] = str(outcome.error_code)
            if outcome.body:
                data = base64.b64encode(outcome.body).decode()[:ERROR_DATA_LIMIT]
                dead.attributes["knativeerrordata"] = data
            forever = DeliveryPolicy(
                retry=None,
                backoff_policy="exponential",
                backoff_delay=self.policy.backoff_delay,
                timeout=self.policy.timeout,
                retry_after_max=self.policy.retry_after_max,
                dead_letter_url=None,
                format=self.policy.format,
                max_backoff=DEAD_LETTER_MAX_BACKOFF,
            )
            dl = await self._deliver(self.policy.dead_letter_url, dead, forever)
            if dl.ok:
                log.warning(
                    "%s: event %s dead-lettered after failing at %s (%s)",
                    self.rt.what,
                    event.id,
                    self.sink,
                    outcome.error,
                )
                await _settle(msg.ack())
                return
        log.warning(
            "%s: event %s not delivered to %s (%s); rejected without requeue (the queue's "
            "own dead-lettering applies)",
            self.rt.what,
            event.id,
            self.sink,
            outcome.error,
        )
        await _settle(msg.reject(requeue=False))

    async def _deliver(self, url: str, event: CloudEvent, policy: DeliveryPolicy) -> Outcome:
        retries = 0
        while True:
            outcome = await send(
                self.rt.session,
                url,
                event,
                namespace=self.source.namespace,
                structured=policy.format == "json",
                timeout=policy.timeout,
                reply_must_be_event=False,
                extra_headers=self.auth() if self.auth is not None else None,
            )
            if outcome.ok or not outcome.retryable or not policy.retries_left(retries):
                return outcome
            retries += 1
            wait = policy.delay_before_retry(retries, outcome.status, outcome.retry_after)
            log.info(
                "%s: %s failed (%s); retry %d in %.2fs",
                self.rt.what,
                url,
                outcome.error,
                retries,
                wait,
            )
            await asyncio.sleep(wait)


async def _settle(op: Any) -> None:
    """Ack or reject; a channel that closed meanwhile already gave the message back."""
    with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
        await op
