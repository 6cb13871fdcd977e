"""What RabbitMQ can never take, checked before anything is sent.

RabbitMQ closes the *whole connection* (`frame_too_large`) when a message's content header
(its properties, AMQP headers included) does not fit in one frame of the negotiated
`frame_max`. Every publisher sharing that connection would then fail until it reconnects, so
one hostile event could take ingress down for everyone. AMQP short strings (message id,
content type, header names, ...) are at most 255 bytes; pamqp refuses longer ones with a
`TypeError` that would otherwise look like a transient publish failure (503).

Both are permanent properties of the message: callers turn `UnpublishableMessage` into a
4xx at ingress and into a dead letter (never a requeue) in dispatch.
"""

from __future__ import annotations

from typing import Any

from pamqp.commands import Basic
from pamqp.header import ContentHeader

#: Bytes kept free in a frame besides the content header: the frame's own envelope (8) plus
#: room so a message close to the limit is refused rather than risked.
FRAME_MARGIN = 1024
#: Short-string properties and the CloudEvents attributes they carry.
SHORT_STRING_PROPERTIES = {
    "message_id": "id",
    "content_type": "datacontenttype",
    "content_encoding": "content_encoding",
    "correlation_id": "correlation_id",
    "reply_to": "reply_to",
    "expiration": "expiration",
    "type": "type",
    "user_id": "user_id",
    "app_id": "app_id",
    "cluster_id": "cluster_id",
}
SHORT_STRING_MAX = 255
#: RabbitMQ's default `max_message_size` (128 MiB). A larger body makes RabbitMQ close the
#: channel with PRECONDITION_FAILED: on the shared publish channel that fails every other
#: publisher's in-flight messages (RABBITMESH_MAX_MESSAGE_BYTES).
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024


class UnpublishableMessage(ValueError):
    """The message can never be published as it is. `status` is the HTTP answer ingress gives
    (413 for size, 400 for a malformed attribute); `field` names what is at fault."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 413) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def header_budget(frame_max: int) -> int:
    """Bytes the encoded AMQP headers of one message may take with this `frame_max`."""
    return max(frame_max - FRAME_MARGIN, 4096) if frame_max else 128 * 1024 - FRAME_MARGIN


def _rough_size(value: Any) -> int:
    """An upper-ish estimate of a header value's encoded size, without encoding it."""
    if isinstance(value, str | bytes):
        return len(value) * (4 if isinstance(value, str) else 1) + 6
    if isinstance(value, dict):
        return sum(len(k) * 4 + 2 + _rough_size(v) for k, v in value.items()) + 4
    if isinstance(value, list | tuple):
        return sum(_rough_size(v) for v in value) + 4
    return 16


def check_publishable(
    properties: Basic.Properties,
    frame_max: int,
    body_size: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> None:
    """Raise UnpublishableMessage when RabbitMQ would refuse these properties or this size.

    Cheap on the common path: the exact encoding is computed only when a rough estimate says
    the header could be near the limit.
    """
    if body_size > max_message_size:
        raise UnpublishableMessage(
            f"the message is {body_size} bytes; RabbitMQ takes at most {max_message_size} "
            "(RABBITMESH_MAX_MESSAGE_BYTES)",
            field="data",
            status=413,
        )
    for prop, attribute in SHORT_STRING_PROPERTIES.items():
        value = getattr(properties, prop, None)
        if isinstance(value, str) and len(value) * 4 > SHORT_STRING_MAX:
            if len(value.encode()) > SHORT_STRING_MAX:
                raise UnpublishableMessage(
                    f"attribute '{attribute}' is {len(value.encode())} bytes; AMQP allows at "
                    f"most {SHORT_STRING_MAX}",
                    field=attribute,
                    status=400,
                )
    headers = properties.headers or {}
    budget = header_budget(frame_max)
    rough = _rough_size(headers) + 512
    if rough < budget:
        return
    for key in headers:
        if len(key.encode()) > SHORT_STRING_MAX:
            raise UnpublishableMessage(
                f"attribute name '{key[:40]}...' is longer than {SHORT_STRING_MAX} bytes",
                field=key[:40],
                status=400,
            )
    try:
        size = len(ContentHeader(0, 0, properties).marshal())
    except (TypeError, ValueError) as e:  # pamqp's refusal of a value it cannot encode
        raise UnpublishableMessage(
            f"attributes cannot be encoded for AMQP: {e}", status=400
        ) from None
    if size > budget:
        largest = max(headers, key=lambda k: _rough_size(headers[k]), default=None)
        raise UnpublishableMessage(
            f"the event's attributes take {size} bytes as AMQP headers; RabbitMQ's frame limit "
            f"allows at most {budget} (largest: '{largest}')",
            field=largest,
            status=413,
        )
