"""The dead-letter sink's worker that keeps what the sink refuses for good in the dead-letter
store (rabbitmesh/dispatch/deadletter_store.py, docs/delivery.md)."""

from __future__ import annotations

import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from rabbitmesh.amqp.client import PublishFailed, UnpublishableMessage
from rabbitmesh.dispatch.deadletter_store import keep, store_copy
from rabbitmesh.dispatch.worker import QueueWorker

log = logging.getLogger("rabbitmesh.deadletters")


class SinkWorker(QueueWorker):
    """Delivers a `:dlq` to its dead-letter sink; what the sink refuses for good (and what
    is no CloudEvent at all) goes to the dead-letter store instead of the parked queue."""

    def __init__(self, *, store: str, retention_seconds: int, **kwargs: Any) -> None:
        super().__init__(mode="dead-letter", **kwargs)
        self.store = store
        self.retention_seconds = retention_seconds

    async def _park(self, msg: AbstractIncomingMessage, why: str) -> None:
        try:
            copy = store_copy(msg, why)
            await keep(
                self.publisher, self.store, self.retention_seconds, copy, self.subscriber.name
            )
        except (UnpublishableMessage, PublishFailed):
            await super()._park(msg, why)  # parked, or handed back to RabbitMQ
            return
        log.warning("dead letter %s kept in %s: %s", msg.message_id, self.store, why)
        await msg.ack()
