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


def raw_message(
    body: bytes,
    headers: dict[str, Any],
    content_type: str | None = None,
    message_id: str | None = None,
) -> Outgoing:
    """A persistent message that is not (or may not be) a CloudEvent."""
    return Outgoing(
        body,
        Basic.Properties(
            headers=headers,
            content_type=content_type,
            message_id=message_id,
            delivery_mode=PERSISTENT,
        ),
    )
