"""flows.knative.dev/v1: Sequence and Parallel.

Both compile into channels and subscriptions as Knative's reconcilers do, with Knative's names
for what they generate (the static methods below); docs/channels-and-flows.md shows how.
"""

from __future__ import annotations

from pydantic import Field

from rabbitmesh.resources.base import Model, Resource
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.resources.messaging import ChannelTemplate
from rabbitmesh.resources.registry import register


class SequenceStep(Destination):
    """A step: where to send (a Destination) and how (its own delivery), as Knative's."""

    delivery: DeliverySpec | None = None


class SequenceSpec(Model):
    steps: list[SequenceStep] = Field(min_length=1)
    channel_template: ChannelTemplate | None = None
    reply: Destination | None = None


@register("flows.knative.dev", ("v1",), "sequences", addressable=True)
class Sequence(Resource):
    spec: SequenceSpec

    @staticmethod
    def channel_name(sequence: str, step: int) -> str:
        """The channel in front of step `step` (channel 0 is the Sequence's ingress)."""
        return f"{sequence}-kn-sequence-{step}"

    @staticmethod
    def subscription_name(sequence: str, step: int) -> str:
        """The subscription of step `step` to its channel."""
        return f"{sequence}-kn-sequence-{step}"


class ParallelBranch(Model):
    filter: Destination | None = None
    subscriber: Destination
    reply: Destination | None = None
    delivery: DeliverySpec | None = None


class ParallelSpec(Model):
    branches: list[ParallelBranch] = Field(min_length=1)
    channel_template: ChannelTemplate | None = None
    reply: Destination | None = None


@register("flows.knative.dev", ("v1",), "parallels", addressable=True)
class Parallel(Resource):
    spec: ParallelSpec

    @staticmethod
    def ingress_channel_name(parallel: str) -> str:
        """The channel every branch's filter subscribes to (the Parallel's ingress)."""
        return f"{parallel}-kn-parallel"

    @staticmethod
    def branch_channel_name(parallel: str, branch: int) -> str:
        """The channel between a branch's filter and its subscriber."""
        return f"{parallel}-kn-parallel-{branch}"

    @staticmethod
    def filter_subscription_name(parallel: str, branch: int) -> str:
        return f"{parallel}-kn-parallel-filter-{branch}"

    @staticmethod
    def subscriber_subscription_name(parallel: str, branch: int) -> str:
        return f"{parallel}-kn-parallel-{branch}"
