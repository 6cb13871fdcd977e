"""CloudEvent <-> aio-pika message, in the RabbitMQ CloudEvents binding (CONTRACT.md §3)."""

from __future__ import annotations

from typing import Any

import aio_pika

from rabbitmesh.cloudevents import CloudEvent, encode_amqp

#: How many delivery attempts already failed; carried on retries through the delay queues.
RETRIES_HEADER = "x-rabbitmesh-retries"


def to_message(event: CloudEvent, extra_headers: dict[str, Any] | None = None) -> aio_pika.Message:
    parts = encode_amqp(event)
    headers = parts.headers
    if extra_headers:
        headers = {**headers, **extra_headers}
    return aio_pika.Message(
        parts.body,
        headers=headers,
        content_type=parts.content_type,
        message_id=parts.message_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
