"""Every source kind -> status: its sink resolved, the types it declares, and whether it runs.

A source's runtime (ticks, processes, webhooks) is not part of this reconciler. Until one is,
a source is reported as it is: not Ready, reason `SourceNotRunning`, with its `sinkUri` and
`ceAttributes` (the types the EventType registry lists for it) filled in as Knative's are. A
source whose sink is a missing Broker/Channel/Sequence/Parallel is not Ready, reason `NotFound`.
"""

from __future__ import annotations

from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.resolve import HOSTED_PATHS
from rabbitmesh.resources.registry import canonical_kind
from rabbitmesh.resources.sources import Source

KINDS = ("PingSource", "ContainerSource", "ApiServerSource", "SinkBinding", "GitLabSource")
KIND = "PingSource"
ORDER = 80


async def reconcile(ctx: Context, source: Source) -> None:
    extra = source.status.model_extra
    assert extra is not None
    sink, ns = source.spec.sink, source.namespace
    if sink.ref is not None and sink.ref.kind in HOSTED_PATHS:
        ref_ns = sink.ref.namespace or ns
        if ctx.get(canonical_kind(sink.ref.kind), ref_ns, sink.ref.name) is None:
            extra.pop("sinkUri", None)
            source.status.set_ready(
                False,
                "NotFound",
                f"sink {sink.ref.kind} {sink.ref.name!r} does not exist in namespace {ref_ns!r}",
            )
            return
    extra["sinkUri"] = ctx.resolve(sink, ns)
    declared = source.declared_event_types()
    if declared:
        extra["ceAttributes"] = [{"type": t, "source": s} for t, s in declared]
    source.status.set_ready(
        False,
        "SourceNotRunning",
        f"{source.KIND} is stored and its sink resolves to {extra['sinkUri']}, but this "
        f"rabbitmesh version does not run {source.KIND}s yet",
    )


async def finalize(ctx: Context, source: Source) -> None:
    """Nothing to remove: a source has no topology of its own."""
