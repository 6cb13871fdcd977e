"""Errors of the CloudEvents codec.

One exception type for every way an incoming message can fail to be a valid CloudEvent, so
the ingress maps all of them to a single 400 whose text names the attribute, header or
JSON member at fault.
"""

from __future__ import annotations


class InvalidEvent(ValueError):
    """The message claims to be a CloudEvent but breaks the spec; the text says where."""


class NotACloudEvent(InvalidEvent):
    """The message does not claim to be a CloudEvent at all.

    Raised for binary mode without a `ce-specversion` header and without a CloudEvents
    content type. A subclass of InvalidEvent so callers that only care about "400 or not"
    need one except clause, while a reply path can tell "plain body" from "broken event".
    """


class OverLimit(InvalidEvent):
    """The request is well-formed but over a size limit (too many events in a batch): the
    ingress answers 413 rather than 400."""
