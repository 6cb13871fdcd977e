"""Replay -> a runner that sends an archived window again (docs/replay.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from rabbitmesh.dispatch.replay import Plan, Progress, ReplayRunner
from rabbitmesh.dispatch.worker import EventFilter, Subscriber
from rabbitmesh.filters import compile_trigger_filter
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.base import Condition, ConditionStatus
from rabbitmesh.resources.duck import DeliverySpec, Destination
from rabbitmesh.resources.eventing import Broker, Trigger
from rabbitmesh.resources.replay import Replay, archive_limits

log = logging.getLogger("rabbitmesh.replay")

KIND = "Replay"
ORDER = 30  # after the brokers and triggers it reads from and sends to
#: How long the first reconcile waits for the runner's end marker.
MARKER_WAIT = 5.0


def set_condition(
    replay: Replay, type_: str, status: ConditionStatus, reason: str = "", message: str = ""
) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for c in replay.status.conditions:
        if c.type == type_:
            if c.status != status:
                c.last_transition_time = now
            c.status, c.reason, c.message = status, reason or None, message or None
            return
    replay.status.conditions.append(
        Condition(
            type=type_,
            status=status,
            reason=reason or None,
            message=message or None,
            lastTransitionTime=now,
        )
    )


def out_queue(ctx: Context, replay: Replay) -> str:
    """Where a Replay to a sink puts its events, delivered like a trigger's queue."""
    return ctx.names.replay_queue(replay.namespace, replay.name) + ":out"


def _not_ready(replay: Replay, reason: str, message: str) -> None:
    replay.status.set_ready(False, reason, message)
    set_condition(replay, "Succeeded", "Unknown", reason, message)


async def reconcile(ctx: Context, replay: Replay) -> None:
    ns, spec = replay.namespace, replay.spec
    broker = ctx.get("Broker", ns, spec.broker)
    if not isinstance(broker, Broker):
        _not_ready(replay, "BrokerDoesNotExist", f"Broker {spec.broker!r} does not exist")
        return
    if archive_limits(broker) is None:
        _not_ready(
            replay,
            "BrokerNotArchived",
            f"Broker {spec.broker!r} keeps no archive (set rabbitmesh.dev/archive-retention)",
        )
        return
    filters: list[EventFilter] = []
    if spec.filter is not None:
        filters.append(compile_trigger_filter(None, [{"cesql": spec.filter}]))
    dest = spec.destination
    if dest.trigger is not None:
        trigger = ctx.get("Trigger", ns, dest.trigger)
        if not isinstance(trigger, Trigger) or trigger.spec.broker != spec.broker:
            _not_ready(
                replay,
                "TriggerDoesNotExist",
                f"Trigger {dest.trigger!r} of broker {spec.broker!r} does not exist",
            )
            return
        # The trigger's filter applies too (its worker would drop the rest anyway; counting
        # them out here keeps replayedCount and totalCount honest).
        attrs = trigger.spec.filter.attributes if trigger.spec.filter else {}
        filters.append(compile_trigger_filter(attrs, trigger.spec.filters))
        queue = ctx.names.trigger_queue(ns, dest.trigger)
    else:
        queue = out_queue(ctx, replay)
        url = ctx.resolve(Destination(ref=dest.ref, uri=dest.uri), ns)
        await ctx.topology.declare_delivery_queue(queue)
        await ctx.run_queue(
            queue,
            Subscriber(
                name=f"replay={ns}/{replay.name}",
                namespace=ns,
                url=url,
                policy=ctx.policy(DeliverySpec(), ns),
                # With authentication-oidc, the Replay sends as itself, as a Trigger does.
                auth=ctx.sender_auth(replay, Destination(ref=dest.ref, uri=dest.uri), ns),
            ),
        )
        extra = replay.status.model_extra
        assert extra is not None
        extra["sinkUri"] = url
    runner = ctx.replays.get(replay.key)
    if runner is None and ctx.run_dispatchers:
        plan = Plan(
            name=replay.name,
            namespace=ns,
            archive=ctx.names.archive_stream(ns, spec.broker),
            progress_queue=ctx.names.replay_queue(ns, replay.name),
            destination_queue=queue,
            start=spec.from_,
            end=spec.to,
            filters=filters,
            queue_arguments=ctx.topology.queue_arguments(),
        )
        runner = ReplayRunner(plan, ctx.publisher, ctx.settings.replay_rate, _reporter(ctx, replay))
        await runner.start()
        ctx.replays[replay.key] = runner
        # `to` defaults to the Replay's creation: its end marker goes into the archive before
        # the API answers (bounded: RabbitMQ may be away, the runner then retries).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.started.wait(), MARKER_WAIT)
        set_condition(replay, "Succeeded", "Unknown", "Replaying", "")
    replay.status.set_ready(True, "ReplayReady", "")


def _reporter(ctx: Context, replay: Replay):  # type: ignore[no-untyped-def]
    key = replay.key

    def report(state: str, progress: Progress | None, message: str) -> None:
        current = ctx.resources.get(key)  # the object the API shows now
        if not isinstance(current, Replay):
            return
        extra = current.status.model_extra
        assert extra is not None
        if progress is not None:
            extra["replayedCount"] = progress.replayed
            if progress.total is not None:
                extra["totalCount"] = progress.total
        if state == "done":
            set_condition(current, "Succeeded", "True", "Replayed", "")
        elif state == "failed":
            set_condition(current, "Succeeded", "Unknown", "ReplayInterrupted", message)
        elif state == "standby":
            set_condition(current, "Succeeded", "Unknown", "ReplayingElsewhere", message)
        else:
            set_condition(current, "Succeeded", "Unknown", "Replaying", "")
        if ctx.on_status is not None:  # watchers (the console) see the progress too
            ctx.on_status(key)

    return report


async def finalize(ctx: Context, replay: Replay) -> None:
    """Deleting a running Replay stops it; its progress and sink queue go with it."""
    runner = ctx.replays.pop(replay.key, None)
    if runner is not None:
        await runner.stop()
    await ctx.topology.delete_queue(ctx.names.replay_queue(replay.namespace, replay.name))
    if replay.spec.destination.trigger is None:
        await ctx.delete_queue(out_queue(ctx, replay))
