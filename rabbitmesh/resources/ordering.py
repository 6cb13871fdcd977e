"""The ordering annotations of a Trigger or Subscription (docs/ordering.md).

rabbitmesh.dev/delivery-order: ordered | unordered     (default unordered)
rabbitmesh.dev/partitions: "N"                         (default 8, 1..64)
"""

from __future__ import annotations

from rabbitmesh.resources.base import FieldError, Resource

ORDER_ANNOTATION = "rabbitmesh.dev/delivery-order"
PARTITIONS_ANNOTATION = "rabbitmesh.dev/partitions"
DEFAULT_PARTITIONS = 8
#: `{queue}:p63` is no longer than `{queue}:dlq`, so the name-length check stays as it is.
MAX_PARTITIONS = 64


def partitions(res: Resource) -> int | None:
    """How many partitions `res` is delivered through; None when it is unordered.

    Raises FieldError naming the annotation when a value is not one of the allowed ones.
    """
    annotations = res.metadata.annotations
    order = annotations.get(ORDER_ANNOTATION, "unordered").strip()
    if order not in ("ordered", "unordered"):
        raise FieldError(
            f"metadata.annotations[{ORDER_ANNOTATION}]",
            f"must be 'ordered' or 'unordered', got {order[:40]!r}",
        )
    raw = annotations.get(PARTITIONS_ANNOTATION)
    n = DEFAULT_PARTITIONS
    if raw is not None:
        text = raw.strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_PARTITIONS:
            raise FieldError(
                f"metadata.annotations[{PARTITIONS_ANNOTATION}]",
                f"must be a whole number from 1 to {MAX_PARTITIONS}, got {raw[:40]!r}",
            )
        n = int(text)
    return n if order == "ordered" else None
