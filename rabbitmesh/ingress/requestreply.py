"""The RequestReply endpoint, `/requestreplies/{namespace}/{name}` (docs/requestreply.md).

A POSTed event goes into the RequestReply's broker with the correlation attribute set to a
fresh id, and the request is held open until an event whose reply attribute equals that id
arrives in the broker: that event is the response (200, binary mode); none within
`spec.timeout` is 504.

Ids are `{nonce}:{replica}:{mac}`: 128 random bits, the replica that holds the request, and
an HMAC-SHA256 of both and the RequestReply's namespace/name (RABBITMESH_REQUESTREPLY_SECRET,
or a random key per replica: only the issuing replica ever checks its ids). A forged or
altered id fails the check and matches nothing, and an id is only good for the RequestReply
that issued it.

`spec.delivery` applies to the one delivery a RequestReply makes itself: the request into
the broker (docs/requestreply.md#specdelivery). `retry`, `backoffPolicy` and `backoffDelay`
retry a publish RabbitMQ did not confirm (down, blocked by an alarm, nacked), within
`spec.timeout`; `timeout` bounds each attempt; a request still not published then (or one
RabbitMQ could never take) is POSTed to `deadLetterSink` (in `format`), with
knativeerrordest/knativeerrorcode/knativeerrordata as a trigger's dead letters, and the
client gets the error as before. Without `spec.delivery`: one attempt, as before.

Replies reach every replica: each has its own exclusive queue, bound to the RequestReply's
headers exchange, which passes on only events that carry the reply attribute. The replica
named in the id resolves its waiter; the others drop the copy. So a reply may be published
through any replica, and nothing is routed by hand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aiohttp import web

from rabbitmesh.amqp.client import BLOCKED_MESSAGE, AmqpClient, PublishFailed
from rabbitmesh.amqp.limits import UnpublishableMessage
from rabbitmesh.amqp.messages import Outgoing, to_message
from rabbitmesh.amqp.names import Names
from rabbitmesh.cloudevents import CloudEvent, InvalidEvent, decode_amqp, encode_binary
from rabbitmesh.dataplane import stamp_broker_ingress
from rabbitmesh.dispatch.policy import DeliveryPolicy
from rabbitmesh.dispatch.sender import send
from rabbitmesh.filters.bindings import routing_key_for_type
from rabbitmesh.ingress.auth import tokens, unauthorized
from rabbitmesh.ingress.handlers import error
from rabbitmesh.ingress.single import (
    Gates,
    Refused,
    Resources,
    admitted,
    check_event,
    read_one_event,
    ready_resource,
)
from rabbitmesh.metrics import requestreply_total
from rabbitmesh.resources.eventing import Broker
from rabbitmesh.resources.eventing_v1alpha1 import RequestReply
from rabbitmesh.settings import Settings

log = logging.getLogger("rabbitmesh.requestreply")

KIND = "RequestReply"
PATH = "/requestreplies/{namespace}/{name}"
#: Bytes of HMAC kept in an id (128 bits: forging one is guessing a 128-bit value).
MAC_BYTES = 16
#: Replies a replica's queue holds unacknowledged (they are acked on arrival: no_ack).
PREFETCH = 1000


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class ReplyIds:
    """Makes and checks signed correlation ids for one replica."""

    def __init__(self, key: bytes, replica: str) -> None:
        self.key = key
        self.replica = replica

    def _mac(self, namespace: str, name: str, nonce: str, replica: str) -> str:
        msg = f"{namespace}/{name}:{nonce}:{replica}".encode()
        return _b64(hmac.new(self.key, msg, hashlib.sha256).digest()[:MAC_BYTES])

    def new(self, namespace: str, name: str) -> str:
        nonce = _b64(secrets.token_bytes(16))
        return f"{nonce}:{self.replica}:{self._mac(namespace, name, nonce, self.replica)}"

    def mine(self, namespace: str, name: str, value: str) -> bool:
        """True when `value` is an id this replica issued for this RequestReply."""
        parts = value.split(":")
        if len(parts) != 3 or parts[1] != self.replica:
            return False
        nonce, replica, mac = parts
        return hmac.compare_digest(mac, self._mac(namespace, name, nonce, replica))


@dataclass(frozen=True)
class RequestDelivery:
    """A RequestReply's `spec.delivery`, resolved by its reconciler."""

    policy: DeliveryPolicy
    #: `Authorization` for the dead-letter sink (authentication_oidc), else None.
    dead_letter_auth: Callable[[], dict[str, str] | None] | None = None


@dataclass
class Listener:
    channel: AbstractRobustChannel
    queue: str
    reply_attribute: str


class RequestReplies:
    """The replica's pending requests, its reply queues, and the HTTP endpoint."""

    def __init__(
        self,
        publisher: AmqpClient,
        consumer: AmqpClient,
        names: Names,
        settings: Settings,
        resources: Resources,
        session: Callable[[], aiohttp.ClientSession | None] = lambda: None,
        gate: Gates = lambda: None,
    ) -> None:
        self.publisher = publisher
        self.session = session
        self.gate = gate
        #: (namespace, name) -> its `spec.delivery` (absent: publish once, no dead letter).
        self.deliveries: dict[tuple[str, str], RequestDelivery] = {}
        self.consumer = consumer
        self.names = names
        self.settings = settings
        self.resources = resources
        self.max_pending = settings.requestreply_max_pending
        secret = settings.requestreply_secret
        replica = secrets.token_hex(6)
        key = secret.encode() if secret else secrets.token_bytes(32)
        self.ids = ReplyIds(key, replica)
        self.waiters: dict[str, asyncio.Future[CloudEvent]] = {}
        self.listeners: dict[tuple[str, str], Listener] = {}
        self._lock = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", PATH, self.handle)]

    # --- reply queues (driven by the reconciler) ---------------------------------------------

    async def listen(self, rr: RequestReply) -> None:
        """This replica's reply queue for `rr`, bound for its current reply attribute."""
        key = (rr.namespace, rr.name)
        attr = rr.spec.reply_attribute
        current = self.listeners.get(key)
        if current is not None and current.reply_attribute == attr:
            return  # the common case, on every request: no lock
        async with self._lock:
            current = self.listeners.get(key)
            if current is not None and current.reply_attribute == attr:
                return
            if current is not None:
                await self._close(current)
            exchange = self.names.requestreply_exchange(*key)
            queue_name = self.names.requestreply_queue(*key, self.ids.replica)
            channel = await self.consumer.channel(prefetch=PREFETCH)
            queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
            await queue.bind(exchange, "", arguments={"x-match": "any", f"ce-{attr}": None})

            async def on_reply(msg: AbstractIncomingMessage) -> None:
                self._on_reply(key, attr, msg)

            await queue.consume(on_reply, no_ack=True)
            self.listeners[key] = Listener(channel, queue_name, attr)

    def set_delivery(self, rr: RequestReply, delivery: RequestDelivery | None) -> None:
        if delivery is None:
            self.deliveries.pop((rr.namespace, rr.name), None)
        else:
            self.deliveries[(rr.namespace, rr.name)] = delivery

    async def forget(self, namespace: str, name: str) -> None:
        self.deliveries.pop((namespace, name), None)
        async with self._lock:
            listener = self.listeners.pop((namespace, name), None)
            if listener is not None:
                await self._close(listener)

    async def _close(self, listener: Listener) -> None:
        try:
            await listener.channel.close()  # the exclusive queue goes with its consumer
        except Exception as e:  # already gone with the connection
            log.debug("closing reply queue %s: %s", listener.queue, e)

    async def close(self) -> None:
        for key in list(self.listeners):
            await self.forget(*key)
        for fut in self.waiters.values():
            fut.cancel()

    def _on_reply(self, key: tuple[str, str], attr: str, msg: AbstractIncomingMessage) -> None:
        value = (msg.headers or {}).get(f"ce-{attr}")
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if not isinstance(value, str) or not self.ids.mine(key[0], key[1], value):
            return  # another replica's, or forged: matches nothing
        fut = self.waiters.get(value)
        if fut is None or fut.done():
            return  # timed out, or a second reply: the first one won
        try:
            reply = decode_amqp(msg.headers, msg.body, msg.content_type)
        except InvalidEvent as e:
            log.warning("reply for %s/%s is not a valid CloudEvent: %s", *key, e)
            return
        fut.set_result(reply)

    # --- the endpoint ----------------------------------------------------------------------

    def _too_many(self) -> web.Response:
        return error(
            503,
            f"too many requests waiting for replies (limit "
            f"{self.max_pending}, RABBITMESH_REQUESTREPLY_MAX_PENDING)",
            **{"Retry-After": "2"},
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        get = self.resources()
        rr: RequestReply | None = None
        try:
            found = ready_resource(get, KIND, request)
            assert get is not None and isinstance(found, RequestReply)
            rr = found
            broker = get("Broker", rr.namespace, rr.spec.broker_ref.name)
            if not isinstance(broker, Broker) or broker.status.ready != "True":
                raise Refused(
                    error(
                        503,
                        f"Broker {rr.namespace}/{rr.spec.broker_ref.name} is not Ready",
                        **{"Retry-After": "2"},
                    )
                )
            # The request goes into the broker: it takes only what the broker's own ingress
            # would take (its ingress tokens, when it has some: they alone decide, as at the
            # broker's ingress). Otherwise, with authentication-oidc, the EventPolicies of
            # the RequestReply itself (and the default authorization mode) decide.
            accepted = tokens(get, broker)
            admission = None
            if accepted is not None:
                if (denied := unauthorized(request, accepted)) is not None:
                    raise Refused(denied)
            else:
                admission = await admitted(self.gate(), request, rr)
            if len(self.waiters) >= self.max_pending:
                raise Refused(self._too_many())
            event = await read_one_event(request, self.settings)
            check_event(admission, event)
        except Refused as r:
            if rr is not None:  # labels only for RequestReplies that exist
                requestreply_total.labels(rr.namespace, rr.name, "refused").inc()
            return r.response
        return await self._request(rr, broker, event)

    async def _request(
        self, rr: RequestReply, broker: Broker, event: CloudEvent
    ) -> web.StreamResponse:
        ns, name = rr.namespace, rr.name
        deadline = time.monotonic() + rr.timeout_seconds  # publishing and waiting, as Knative
        reply_attr, corr_attr = rr.spec.reply_attribute, rr.spec.correlation_attribute
        if reply_attr in event.attributes:
            # A request that is also a reply would answer whatever id it names.
            requestreply_total.labels(ns, name, "refused").inc()
            return error(400, f"the request must not carry the reply attribute {reply_attr!r}")
        try:
            await self.listen(rr)  # normally there already (the reconciler made it)
        except Exception as e:  # RabbitMQ away: the reply queue cannot be made
            return error(503, f"RabbitMQ is unavailable: {e}", **{"Retry-After": "2"})
        # Checked again here, with no await until the waiter is registered: the check in
        # handle() comes before the body is read, and any number of requests sending their
        # bodies slowly all passed it together.
        if len(self.waiters) >= self.max_pending:
            requestreply_total.labels(ns, name, "refused").inc()
            return self._too_many()
        correlation = self.ids.new(ns, name)
        event.attributes[corr_attr] = correlation
        try:
            stamp_broker_ingress(event)
            message = to_message(event)
        except InvalidEvent as e:
            return error(400, str(e))
        fut: asyncio.Future[CloudEvent] = asyncio.get_running_loop().create_future()
        self.waiters[correlation] = fut  # before the publish: a reply may be quick
        try:
            failed = await self._publish(rr, broker, event, message, deadline)
            if failed is not None:
                return failed
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    reply = await fut
            except TimeoutError:
                requestreply_total.labels(ns, name, "timeout").inc()
                return error(504, f"no reply within {rr.spec.timeout} ({corr_attr} {correlation})")
        finally:
            self.waiters.pop(correlation, None)
        requestreply_total.labels(ns, name, "replied").inc()
        headers, body = encode_binary(reply)
        return web.Response(status=200, body=body, headers=headers)

    async def _publish(
        self,
        rr: RequestReply,
        broker: Broker,
        event: CloudEvent,
        message: Outgoing,
        deadline: float,
    ) -> web.Response | None:
        """Publish the request into the broker, as `spec.delivery` says: None once RabbitMQ
        confirmed it, else the error response (after dead-lettering it, with a sink)."""
        ns, name = rr.namespace, rr.name
        delivery = self.deliveries.get((ns, name))
        policy = delivery.policy if delivery is not None else None
        exchange = self.names.broker_exchange(ns, broker.name)
        retries = 0
        while True:
            try:
                if not self.publisher.connected:
                    raise PublishFailed("RabbitMQ is unavailable")
                if self.publisher.blocked:
                    raise PublishFailed(BLOCKED_MESSAGE)
                attempt_timeout = None  # without spec.delivery: the publisher's own
                if policy is not None:  # delivery.timeout, never past spec.timeout
                    left = max(0.0, deadline - time.monotonic())
                    attempt_timeout = min(policy.timeout or left, left)
                async with asyncio.timeout(attempt_timeout):
                    await self.publisher.publish(
                        exchange,
                        routing_key_for_type(event.type),
                        message,
                        mandatory=True,
                        unroutable_ok=True,  # nobody listens: the timeout answers, as Knative
                    )
                return None
            except UnpublishableMessage as e:  # never: no retry
                return await self._failed(rr, broker, event, e.status, str(e), delivery)
            except (PublishFailed, TimeoutError) as e:
                why = str(e) if isinstance(e, PublishFailed) else "publish not confirmed in time"
                if policy is None or not policy.retries_left(retries):
                    return await self._failed(rr, broker, event, 503, why, delivery)
                delay = policy.delay_before_retry(retries + 1, 503, None)
                if time.monotonic() + delay >= deadline:
                    why += f" (no time left for a retry within {rr.spec.timeout})"
                    return await self._failed(rr, broker, event, 503, why, delivery)
                retries += 1
                requestreply_total.labels(ns, name, "publish_retried").inc()
                log.info(
                    "RequestReply %s/%s: publish of %s failed (%s); retry %d in %.2fs",
                    ns,
                    name,
                    event.id,
                    why,
                    retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _failed(
        self,
        rr: RequestReply,
        broker: Broker,
        event: CloudEvent,
        status: int,
        why: str,
        delivery: RequestDelivery | None,
    ) -> web.Response:
        """The error answer for a request that did not get into the broker; sent to the
        dead-letter sink first when `spec.delivery` names one."""
        retry = {"Retry-After": "2"} if status == 503 else {}
        message = f"event not accepted: {why}"
        url = delivery.policy.dead_letter_url if delivery is not None else None
        session = self.session()
        if url is None or session is None:
            return error(status, message, **retry)
        dead = event.copy()
        dead.attributes["knativeerrordest"] = (
            broker.status.address.url if broker.status.address else ""
        ) or self.names.broker_exchange(rr.namespace, broker.name)
        dead.attributes["knativeerrorcode"] = str(status)
        dead.attributes["knativeerrordata"] = base64.b64encode(why.encode()).decode()
        auth = delivery.dead_letter_auth() if delivery and delivery.dead_letter_auth else None
        outcome = await send(
            session,
            url,
            dead,
            namespace=rr.namespace,
            structured=delivery.policy.format == "json",  # type: ignore[union-attr]
            timeout=delivery.policy.timeout or self.settings.request_timeout,  # type: ignore[union-attr]
            reply_must_be_event=False,
            extra_headers=auth,
        )
        if outcome.ok:
            requestreply_total.labels(rr.namespace, rr.name, "dead_lettered").inc()
            return error(status, f"{message}; sent to the dead-letter sink {url}", **retry)
        log.warning(
            "RequestReply %s/%s: dead-letter sink %s refused request %s: %s",
            rr.namespace,
            rr.name,
            url,
            event.id,
            outcome.error,
        )
        return error(
            status,
            f"{message}; the dead-letter sink {url} refused it too ({outcome.error})",
            **retry,
        )
