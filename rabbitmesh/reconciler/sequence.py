"""Sequence -> one channel per step and one subscription per step, as Knative compiles it.

Step i's subscription reads channel i (`{name}-kn-sequence-{i}`), delivers to the step with
the step's own `delivery`, and publishes the step's reply into channel i+1; the last step's
reply goes to `spec.reply` (dropped without one). An empty reply ends the chain there.
Channel 0 is the Sequence's ingress, `POST /sequences/{namespace}/{name}`.
"""

from __future__ import annotations

import aio_pika

from rabbitmesh.dispatch.policy import merge_delivery
from rabbitmesh.reconciler import generated
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.reconciler.subscription import InternalReply, Plan, Unresolved, wire
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.flows import Sequence

KIND = "Sequence"
ORDER = 30
FLOW = "sequence"


def _exchange(ctx: Context, seq: Sequence, step: int) -> str:
    return ctx.names.flow_exchange(FLOW, seq.namespace, Sequence.channel_name(seq.name, step))


def _queue(ctx: Context, seq: Sequence, step: int) -> str:
    return ctx.names.flow_queue(FLOW, seq.namespace, Sequence.subscription_name(seq.name, step))


async def _remove_steps(ctx: Context, seq: Sequence, steps: range) -> None:
    await generated.remove(
        ctx, [_queue(ctx, seq, i) for i in steps], [_exchange(ctx, seq, i) for i in steps]
    )


async def reconcile(ctx: Context, seq: Sequence) -> None:
    ns, name, spec = seq.namespace, seq.name, seq.spec
    n = len(spec.steps)
    template = spec.channel_template or ctx.effective().channel_template(ns).value
    exchanges = [_exchange(ctx, seq, i) for i in range(n)]
    for exchange in exchanges:
        await ctx.topology.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
    await _remove_steps(
        ctx, seq, range(n, generated.previous_count(ctx, seq, "channelStatuses", "steps"))
    )
    seq.status.address = Address(url=address_url(ctx.settings.base_url, KIND, ns, name))

    subscriptions, problems = [], []
    for i, step in enumerate(spec.steps):
        plan = Plan(
            label=f"sequence={ns}/{name} step={i}",
            namespace=ns,
            queue=_queue(ctx, seq, i),
            channel_exchange=exchanges[i],
            subscriber=step,
            reply=InternalReply(exchanges[i + 1]) if i + 1 < n else spec.reply,
            delivery=merge_delivery(step.delivery, template.delivery),
            sender=seq,
        )
        error = None
        try:
            await wire(ctx, plan)
        except Unresolved as e:
            error = e
            problems.append(f"step {i}: {e.message}")
        subscriptions.append(
            generated.subscription_status(Sequence.subscription_name(name, i), ns, error)
        )
    extra = seq.status.model_extra
    assert extra is not None
    extra["channelStatuses"] = [
        generated.channel_status(template, Sequence.channel_name(name, i), ns) for i in range(n)
    ]
    extra["subscriptionStatuses"] = subscriptions
    if problems:
        seq.status.set_ready(False, "SubscriptionsNotReady", "; ".join(problems))
    else:
        seq.status.set_ready(True, "SequenceReady", "")


async def finalize(ctx: Context, seq: Sequence) -> None:
    count = max(len(seq.spec.steps), generated.previous_count(ctx, seq, "channelStatuses", "steps"))
    await _remove_steps(ctx, seq, range(count))
