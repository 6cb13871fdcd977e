"""Parallel -> an ingress channel fanning out to every branch, as Knative compiles it.

Per branch i with a filter: a filter subscription (`{name}-kn-parallel-filter-{i}`) reads the
ingress channel (`{name}-kn-parallel`) and calls the filter; an event the filter replies with
goes into the branch channel (`{name}-kn-parallel-{i}`), an empty 2xx drops it for this branch
only. The subscriber subscription (`{name}-kn-parallel-{i}`) reads the branch channel, delivers
with the branch's `delivery`, and sends replies to the branch `reply`, else the Parallel's,
else drops them. A branch without filter always runs: Knative forwards through a filter
subscription without subscriber; here its subscriber's queue is bound to the ingress channel,
which RabbitMQ does without a hop.
"""

from __future__ import annotations

from typing import Any

import aio_pika

from rabbitmesh.dispatch.policy import merge_delivery
from rabbitmesh.reconciler import generated
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.reconciler.subscription import InternalReply, Plan, Unresolved, unwire, wire
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.resources.flows import Parallel, ParallelBranch
from rabbitmesh.resources.messaging import ChannelTemplate

KIND = "Parallel"
ORDER = 30
FLOW = "parallel"
FANOUT = aio_pika.ExchangeType.FANOUT


class _Names:
    """RabbitMQ names of what one Parallel generates."""

    def __init__(self, ctx: Context, par: Parallel) -> None:
        self.ctx, self.ns, self.name = ctx, par.namespace, par.name

    @property
    def ingress(self) -> str:
        return self.ctx.names.flow_exchange(FLOW, self.ns, Parallel.ingress_channel_name(self.name))

    def branch_exchange(self, i: int) -> str:
        return self.ctx.names.flow_exchange(
            FLOW, self.ns, Parallel.branch_channel_name(self.name, i)
        )

    def filter_queue(self, i: int) -> str:
        return self.ctx.names.flow_queue(
            FLOW, self.ns, Parallel.filter_subscription_name(self.name, i)
        )

    def subscriber_queue(self, i: int) -> str:
        return self.ctx.names.flow_queue(
            FLOW, self.ns, Parallel.subscriber_subscription_name(self.name, i)
        )


async def _remove_branches(ctx: Context, names: _Names, branches: range) -> None:
    await generated.remove(
        ctx,
        [q for i in branches for q in (names.filter_queue(i), names.subscriber_queue(i))],
        [names.branch_exchange(i) for i in branches],
    )


async def _wire_branch(
    ctx: Context, par: Parallel, names: _Names, i: int, template: ChannelTemplate
) -> tuple[dict[str, Any], list[str]]:
    """Wire branch i; returns its status entry and its problems."""
    ns, name, branch = par.namespace, par.name, par.spec.branches[i]
    status: dict[str, Any] = {}
    problems: list[str] = []
    label = f"parallel={ns}/{name} branch={i}"

    async def attempt(plan: Plan, key: str, sub_name: str) -> None:
        error = None
        try:
            await wire(ctx, plan)
        except Unresolved as e:
            error = e
            problems.append(f"branch {i}: {e.message}")
        status[key] = generated.subscription_status(sub_name, ns, error)

    if branch.filter is not None:
        await ctx.topology.declare_exchange(names.branch_exchange(i), FANOUT)
        # The filter gets the channel's delivery, not the branch's (that is the subscriber's).
        await attempt(
            Plan(
                label=f"{label} filter",
                namespace=ns,
                queue=names.filter_queue(i),
                channel_exchange=names.ingress,
                subscriber=branch.filter,
                reply=InternalReply(names.branch_exchange(i)),
                delivery=template.delivery or DeliverySpec(),
                sender=par,
            ),
            "filterSubscriptionStatus",
            Parallel.filter_subscription_name(name, i),
        )
        status["filterChannelStatus"] = generated.channel_status(
            template, Parallel.branch_channel_name(name, i), ns
        )
        reads, unbind_from = names.branch_exchange(i), (names.ingress,)  # type: tuple[str, tuple[str, ...]]
    else:
        await unwire(ctx, names.filter_queue(i))
        await ctx.topology.delete_exchange(names.branch_exchange(i))
        reads, unbind_from = names.ingress, ()
    await attempt(
        Plan(
            label=label,
            namespace=ns,
            queue=names.subscriber_queue(i),
            channel_exchange=reads,
            subscriber=branch.subscriber,
            reply=_reply(par, branch),
            delivery=merge_delivery(branch.delivery, template.delivery),
            unbind_from=unbind_from,
            sender=par,
        ),
        "subscriberSubscriptionStatus",
        Parallel.subscriber_subscription_name(name, i),
    )
    return status, problems


def _reply(par: Parallel, branch: ParallelBranch) -> Destination | None:
    return branch.reply if branch.reply is not None else par.spec.reply


async def reconcile(ctx: Context, par: Parallel) -> None:
    ns, name = par.namespace, par.name
    names = _Names(ctx, par)
    template = par.spec.channel_template or ctx.effective().channel_template(ns).value
    n = len(par.spec.branches)
    await ctx.topology.declare_exchange(names.ingress, FANOUT)
    await _remove_branches(
        ctx, names, range(n, generated.previous_count(ctx, par, "branchStatuses", "branches"))
    )
    par.status.address = Address(url=address_url(ctx.settings.base_url, KIND, ns, name))

    branches, problems = [], []
    for i in range(n):
        status, errors = await _wire_branch(ctx, par, names, i, template)
        branches.append(status)
        problems.extend(errors)
    extra = par.status.model_extra
    assert extra is not None
    extra["ingressChannelStatus"] = generated.channel_status(
        template, Parallel.ingress_channel_name(name), ns
    )
    extra["branchStatuses"] = branches
    if problems:
        par.status.set_ready(False, "SubscriptionsNotReady", "; ".join(problems))
    else:
        par.status.set_ready(True, "ParallelReady", "")


async def finalize(ctx: Context, par: Parallel) -> None:
    names = _Names(ctx, par)
    count = max(
        len(par.spec.branches), generated.previous_count(ctx, par, "branchStatuses", "branches")
    )
    await _remove_branches(ctx, names, range(count))
    await ctx.topology.delete_exchange(names.ingress)
