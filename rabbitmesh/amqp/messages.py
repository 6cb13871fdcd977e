"""CloudEvent -> AMQP message, in the RabbitMQ CloudEvents binding (docs/contract.md §3).

Messages are built straight as pamqp properties: aio-pika's Message class costs about as
much as the rest of the ingress path together, and the publish path needs only body and
properties (`AmqpClient.publish` accepts an aio_pika.Message too, which has both).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pamqp.commands import Basic

from rabbitmesh.cloudevents import CloudEvent, encode_amqp

#: How many delivery attempts already failed; carried on retries through the delay queues.
RETRIES_HEADER = "x-rabbitmesh-retries"
#: On a dead letter: how many delivery attempts it had (docs/delivery.md, dead-letter list).
ATTEMPTS_HEADER = "x-rabbitmesh-attempts"

PERSISTENT = 2


class Outgoing(NamedTuple):
    body: bytes
    properties: Basic.Properties


def to_message(event: CloudEvent, extra_headers: dict[str, Any] | None = None) -> Outgoing:
    parts = encode_amqp(event)
    headers = parts.headers
    if extra_headers:
        headers = {**headers, **extra_headers}
    return Outgoing(
        parts.body,
        Basic.Properties(
            headers=headers,
            content_type=parts.content_type,
            message_id=parts.message_id,
            delivery_mode=PERSISTENT,
        ),
    )


def sendable_headers(value: Any) -> Any:
    """Headers received from RabbitMQ, made sendable again: pamqp hands an AMQP long string
    that is not UTF-8 over as `bytes`, which it cannot encode (TypeError). Such a value is
    sent as a byte array of the same bytes. Without this, a copy of a message from a
    producer that sent one (a Java or Go client) failed every time it was tried: an ordered
    trigger's splitter handed it back to the head of its queue, for ever."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: sendable_headers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sendable_headers(v) for v in value]
    return value


def raw_message(
    body: bytes,
    headers: dict[str, Any],
    content_type: str | None = None,
    message_id: str | None = None,
) -> Outgoing:
    """A persistent message that is not (or may not be) a CloudEvent.

    `headers` may come from a message received as it was (a copy): see sendable_headers."""
    return Outgoing(
        body,
        Basic.Properties(
            headers=sendable_headers(headers),
            content_type=content_type,
            message_id=message_id,
            delivery_mode=PERSISTENT,
        ),
    )
