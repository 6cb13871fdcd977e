"""JobSink -> a fanout exchange (its ingress) in front of a durable queue of runs, a stream of
run records, and on dispatching replicas a runner (rabbitmesh/jobs/runner.py)."""

from __future__ import annotations

import aio_pika

from rabbitmesh.amqp.streams import wait_writable
from rabbitmesh.ingress.auth import problem as auth_problem
from rabbitmesh.jobs.runner import stream_arguments
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import address_url
from rabbitmesh.resources.base import Address
from rabbitmesh.resources.sinks import JobSink
from rabbitmesh.sources.container import runtime_for
from rabbitmesh.sources.secrets import NotReady

KIND = "JobSink"
ORDER = 15


async def reconcile(ctx: Context, job: JobSink) -> None:
    ns, name = job.namespace, job.name
    exchange = ctx.names.jobsink_exchange(ns, name)
    queue = ctx.names.jobsink_queue(ns, name)
    await ctx.topology.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
    # On the lanes their deletes go over (Topology.delete_queue): a queue is declared robust
    # here, and only a delete on the channel that declared it takes it off that channel's
    # restore list; otherwise every reconnect re-created a deleted JobSink's queues.
    await ctx.topology.lane(queue).declare_queue(
        queue,
        durable=True,
        # One replica runs a JobSink's events at a time: it knows which it started.
        arguments=ctx.topology.queue_arguments({"x-single-active-consumer": True}),
    )
    await ctx.bind_exactly(queue, {(exchange, "")})
    runs = ctx.names.jobsink_runs(ns, name)
    await ctx.topology.lane(runs).declare_queue(runs, durable=True, arguments=stream_arguments())
    # Its runner appends to it at once, on the shared publisher (see wait_writable).
    await wait_writable(ctx.publisher, runs)
    job.status.address = Address(url=address_url(ctx.settings.base_url, KIND, ns, name))
    try:
        runtime_for(job, ctx.settings.container_runtime, ctx.settings.allow_process_runtime)
    except NotReady as e:
        if ctx.jobs is not None:
            await ctx.jobs.drop(ns, name)  # queued runs wait in RabbitMQ
        job.status.set_ready(False, e.reason, e.message)
        return
    why = auth_problem(ctx.get, job)
    if why is not None:  # fail closed: no runs until the tokens are there
        job.status.set_ready(False, "IngressTokenSecretMissing", why)
        return
    if ctx.jobs is not None:
        await ctx.jobs.ensure(job)
        show_runs(ctx, job)
    job.status.set_ready(True, "JobSinkReady", "")


def show_runs(ctx: Context, job: JobSink) -> None:
    """The runs this replica knows of, in status (`rabbitmesh jobsink runs` reads them)."""
    summary = ctx.jobs.summary(job.namespace, job.name) if ctx.jobs is not None else None
    if summary is None:
        return
    # The runner may hold an older generation's object: the current one is what the API shows.
    for res in {id(job): job, id(cur := ctx.get(KIND, job.namespace, job.name)): cur}.values():
        extra = res.status.model_extra if res is not None else None
        if extra is not None:
            extra["jobs"] = summary


async def finalize(ctx: Context, job: JobSink) -> None:
    ns, name = job.namespace, job.name
    if ctx.jobs is not None:
        await ctx.jobs.drop(ns, name)
    await ctx.delete_queue(ctx.names.jobsink_queue(ns, name))
    await ctx.topology.delete_queue(ctx.names.jobsink_runs(ns, name))
    await ctx.topology.delete_exchange(ctx.names.jobsink_exchange(ns, name))
