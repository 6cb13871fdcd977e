"""Every exchange and queue name rabbitmesh uses, in one place (docs/mapping.md).

All names start with RABBITMESH_TOPOLOGY_PREFIX so several installs or test runs can share a
vhost. Namespaces are DNS labels (no dots), so `{kind}.{namespace}.{name}` is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.core import Namespace
from rabbitmesh.resources.flows import Parallel, Sequence

#: AMQP 0-9-1 limits exchange names to 127 characters (the client, pamqp, enforces it) and
#: RabbitMQ queue names to 255 bytes. Resource names are ASCII: characters are bytes.
MAX_EXCHANGE_NAME = 127
MAX_QUEUE_NAME = 255


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

    def partition_queue(self, queue: str, index: int) -> str:
        """Partition `index` of an ordered trigger's or subscription's queue (docs/ordering.md)."""
        return f"{queue}:p{index}"

    def dead_letter_store(self, queue: str) -> str:
        """The stream that keeps a queue's dead letters for inspection (docs/delivery.md)."""
        return f"{queue}:dls"

    def archive_stream(self, namespace: str, broker: str) -> str:
        """A broker's archive: every event it accepted, in arrival order (docs/replay.md)."""
        return f"{self.prefix}.archive.{namespace}.{broker}"

    def replay_queue(self, namespace: str, name: str) -> str:
        """A Replay's progress (one message) and lease (its one exclusive consumer)."""
        return f"{self.prefix}.replay.{namespace}.{name}"

    def requestreply_exchange(self, namespace: str, name: str) -> str:
        """A RequestReply's headers exchange: bound to its broker's exchange, it passes on
        only the events that carry the reply attribute."""
        return f"{self.prefix}.requestreply.{namespace}.{name}"

    def requestreply_queue(self, namespace: str, name: str, replica: str) -> str:
        """One replica's replies of a RequestReply (exclusive: it goes with the replica)."""
        return f"{self.requestreply_exchange(namespace, name)}:{replica}"

    def jobsink_exchange(self, namespace: str, name: str) -> str:
        """A JobSink's ingress: a fanout exchange in front of its queue of runs."""
        return f"{self.prefix}.jobsink.{namespace}.{name}"

    def jobsink_queue(self, namespace: str, name: str) -> str:
        """Runs not started yet, durably (a run is 'recorded' once this queue has it)."""
        return f"{self.prefix}.jobsink.{namespace}.{name}"

    def jobsink_runs(self, namespace: str, name: str) -> str:
        """The stream of a JobSink's run records (accepted, started, finished)."""
        return f"{self.prefix}.jobsink.{namespace}.{name}:runs"

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

    # --- how long a resource's name may be -------------------------------------------------

    def derived(self, res: Resource) -> list[tuple[str, int]]:
        """The longest RabbitMQ names rabbitmesh derives from `res`'s name, each with its
        limit: an exchange and a queue, or nothing when its name becomes none (sources'
        queues are hashed when too long; see source_queue)."""
        ns, name = res.namespace, res.name
        match res.KIND:
            case "Broker":
                return [(self.broker_exchange(ns, name), MAX_EXCHANGE_NAME)]
            case "Namespace" if isinstance(res, Namespace) and res.injects_broker:
                return [(self.broker_exchange(name, "default"), MAX_EXCHANGE_NAME)]
            case "Trigger":
                return [(self.dead_letter_queue(self.trigger_queue(ns, name)), MAX_QUEUE_NAME)]
            case "Channel":
                return [(self.channel_exchange(ns, name), MAX_EXCHANGE_NAME)]
            case "Subscription":  # its `:reply` queue's `:dlq` (and `:dls`) is the longest
                queue = self.subscription_queue(ns, name)
                return [(self.reply_dead_letters(queue), MAX_QUEUE_NAME)]
            case "Sequence" if isinstance(res, Sequence):
                last = max(len(res.spec.steps) - 1, 0)
                return [
                    (
                        self.flow_exchange("sequence", ns, Sequence.channel_name(name, last)),
                        MAX_EXCHANGE_NAME,
                    ),
                    (
                        self.reply_dead_letters(
                            self.flow_queue("sequence", ns, Sequence.subscription_name(name, last))
                        ),
                        MAX_QUEUE_NAME,
                    ),
                ]
            case "RequestReply":  # a replica id (12 hex) follows the ':'
                return [
                    (self.requestreply_queue(ns, name, "0" * 12), MAX_QUEUE_NAME),
                    (self.requestreply_exchange(ns, name), MAX_EXCHANGE_NAME),
                ]
            case "JobSink":
                return [
                    (self.jobsink_runs(ns, name), MAX_QUEUE_NAME),
                    (self.jobsink_exchange(ns, name), MAX_EXCHANGE_NAME),
                ]
            case "Parallel" if isinstance(res, Parallel):
                last = max(len(res.spec.branches) - 1, 0)
                return [
                    (
                        self.flow_exchange(
                            "parallel", ns, Parallel.branch_channel_name(name, last)
                        ),
                        MAX_EXCHANGE_NAME,
                    ),
                    (
                        self.reply_dead_letters(
                            self.flow_queue(
                                "parallel", ns, Parallel.filter_subscription_name(name, last)
                            )
                        ),
                        MAX_QUEUE_NAME,
                    ),
                ]
        return []

    def reply_dead_letters(self, queue: str) -> str:
        """The `:dlq` of `queue`'s `:reply` queue: the longest queue name a subscription makes
        (its `:dls` stream is as long). A `:dlq` may be declared only at a first failure
        (amqp/topology.py): a name too long must be refused at write time, not then."""
        return self.dead_letter_queue(self.reply_queue(queue))

    def check_length(self, res: Resource) -> None:
        """FieldError on metadata.name when a RabbitMQ name derived from it would be too long:
        RabbitMQ (or the AMQP client) would refuse it and the resource never reconcile."""
        over = [(len(n.encode()) - limit, n, limit) for n, limit in self.derived(res)]
        if not over or max(over)[0] <= 0:
            return
        excess, longest, limit = max(over)
        allowed = max(len(res.name.encode()) - excess, 0)
        what = "an exchange" if limit == MAX_EXCHANGE_NAME else "a queue"
        where = f" in namespace {res.namespace!r}" if res.NAMESPACED else ""
        raise FieldError(
            "metadata.name",
            f"too long: at most {allowed} characters for a {res.KIND}{where} with "
            f"RABBITMESH_TOPOLOGY_PREFIX {self.prefix!r} (the RabbitMQ "
            f"name made from it, {_ellipsis(longest)}, would be {len(longest.encode())} bytes; "
            f"AMQP allows {limit} for {what} name)",
        )


def _ellipsis(text: str) -> str:
    return repr(text if len(text) <= 80 else f"{text[:40]}...{text[-30:]}")
