"""CloudEvents 1.0.2 / 0.3 codec: the event model, validation, HTTP and AMQP bindings.

Pure Python (no I/O), strict where the spec says MUST, and fast on the delivery path.
Unlike the CloudEvents Python SDK it never invents id or time, rejects malformed
percent-encoding, decides binary mode only from `ce-specversion`, and supports batches.
"""

from .amqp import AmqpParts, decode_amqp, encode_amqp
from .contenttype import is_json_content_type
from .errors import InvalidEvent, NotACloudEvent, OverLimit
from .event import REQUIRED_ATTRIBUTES, SPEC_ATTRIBUTES, AttributeValue, CloudEvent
from .http import decode_request, decode_response, encode_batch, encode_binary, encode_structured
from .jsonformat import MAX_JSON_DEPTH
from .validation import validate

__all__ = [
    "AmqpParts",
    "AttributeValue",
    "CloudEvent",
    "InvalidEvent",
    "MAX_JSON_DEPTH",
    "NotACloudEvent",
    "OverLimit",
    "REQUIRED_ATTRIBUTES",
    "SPEC_ATTRIBUTES",
    "decode_amqp",
    "decode_request",
    "decode_response",
    "encode_amqp",
    "encode_batch",
    "encode_binary",
    "encode_structured",
    "is_json_content_type",
    "validate",
]
