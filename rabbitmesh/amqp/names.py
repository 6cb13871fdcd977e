"""Every exchange and queue name rabbitmesh uses, in one place (DESIGN.md's mapping table).

All names start with RABBITMESH_TOPOLOGY_PREFIX so several installs or test runs can share a
vhost. Namespaces are DNS labels (no dots), so `{kind}.{namespace}.{name}` is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Names:
    prefix: str

    def broker_exchange(self, namespace: str, name: str) -> str:
        return f"{self.prefix}.broker.{namespace}.{name}"

    def trigger_queue(self, namespace: str, name: str) -> str:
        return f"{self.prefix}.trigger.{namespace}.{name}"

    def dead_letter_queue(self, queue: str) -> str:
        """Where a queue's events wait for its dead-letter sink (one per trigger/subscription)."""
        return f"{queue}.dlq"

    @property
    def delay_exchange(self) -> str:
        """Headers exchange that routes a retry to the delay queue of its delay."""
        return f"{self.prefix}.delay"

    def delay_queue(self, delay_ms: int) -> str:
        return f"{self.prefix}.delay.{delay_ms}ms"

    @property
    def parked_queue(self) -> str:
        """Messages that are not CloudEvents at all: kept for an operator, never redelivered."""
        return f"{self.prefix}.parked"
