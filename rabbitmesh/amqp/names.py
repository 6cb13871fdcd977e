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

    def channel_exchange(self, namespace: str, name: str) -> str:
        """A Channel (or InMemoryChannel): a durable fanout exchange."""
        return f"{self.prefix}.channel.{namespace}.{name}"

    def subscription_queue(self, namespace: str, name: str) -> str:
        return f"{self.prefix}.subscription.{namespace}.{name}"

    def flow_exchange(self, flow: str, namespace: str, channel: str) -> str:
        """A channel a Sequence or Parallel (`flow`) generated, named as Knative names it
        (`{sequence}-kn-sequence-{i}`): its own segment, so it never meets a user Channel."""
        return f"{self.prefix}.{flow}.{namespace}.{channel}"

    def flow_queue(self, flow: str, namespace: str, subscription: str) -> str:
        """A subscription a Sequence or Parallel generated (queues and exchanges are apart)."""
        return f"{self.prefix}.{flow}.{namespace}.{subscription}"

    def reply_queue(self, queue: str) -> str:
        """Where a subscription's replies wait for an external `reply` URL. `:` appears in no
        resource name, so this never equals another resource's queue."""
        return f"{queue}:reply"

    def dead_letter_queue(self, queue: str) -> str:
        """Where a queue's events wait for its dead-letter sink (one per trigger/subscription)."""
        return f"{queue}:dlq"  # ":" cannot occur in names: no clash with a trigger "x.dlq"

    @property
    def delay_exchange(self) -> str:
        """Headers exchange that routes a retry to the delay queue of its delay."""
        return f"{self.prefix}.delay"

    def delay_queue(self, delay_ms: int) -> str:
        return f"{self.prefix}.delay.{delay_ms}ms"

    @property
    def store_queue(self) -> str:
        """The resource store: a stream of apply/delete records every replica follows."""
        return f"{self.prefix}.store"

    @property
    def parked_queue(self) -> str:
        """Messages that are not CloudEvents at all: kept for an operator, never redelivered."""
        return f"{self.prefix}.parked"
