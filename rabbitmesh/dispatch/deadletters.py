"""The dead-letter sink's worker that keeps what the sink refuses for good in the dead-letter
store (rabbitmesh/dispatch/deadletter_store.py, docs/delivery.md)."""

from __future__ import annotations

import logging
from typing import Any

from rabbitmesh.amqp.client import PublishFailed, UnpublishableMessage
from rabbitmesh.dispatch.deadletter_store import KeepDeadLetter, store_copy
from rabbitmesh.dispatch.worker import Incoming, QueueWorker

log = logging.getLogger("rabbitmesh.deadletters")


class SinkWorker(QueueWorker):
    """Delivers a `:dlq` to its dead-letter sink; what the sink refuses for good (and what
    is no CloudEvent at all) goes to the dead-letter store instead of the parked queue."""

    def __init__(self, *, keep: KeepDeadLetter, parent_queue: str, **kwargs: Any) -> None:
        super().__init__(mode="dead-letter", **kwargs)
        self.keep = keep
        self.parent_queue = parent_queue

    async def _park(self, msg: Incoming, why: str) -> None:
        try:
            await self.keep(self.parent_queue, store_copy(msg, why))
        except (UnpublishableMessage, PublishFailed):
            await super()._park(msg, why)  # parked, or handed back to RabbitMQ
            return
        log.warning("dead letter %s of %s kept: %s", msg.message_id, self.parent_queue, why)
        await msg.ack()
