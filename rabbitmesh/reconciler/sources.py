"""Every source kind -> its runtime (on replicas that run sources) and its status.

Status, as Knative's sources report it: `sinkUri` (the resolved sink), `ceAttributes` (the
types the source emits; the EventType registry lists them), and Ready:
- False, `NotFound`: the sink is a Broker/Channel/Sequence/Parallel that does not exist;
- False, `SecretNotFound`: a `secretKeyRef` names a missing Secret or key;
- False, `InvalidSpec`: the spec cannot run here (a process-runtime container without command);
- False, `RuntimeNotAllowed`: the operator's runtime policy forbids it (rabbitmesh/sources/
  container.py: an annotation asking for another runtime, or the process runtime turned off);
- False with the runtime's reason (`BackOff`, `ContainerFailed`, `ApiServerUnavailable`,
  `WebhookNotConfigured`, ...), on the replica running the source, while it is failing;
- True otherwise.
Validation proper (a bad cron, an unknown time zone, both data fields) happens earlier: such a
manifest is rejected (422, or one line at start) and never stored.

Replicas whose role is `all` or `sources` run the sources (rabbitmesh/sources/manager.py),
one replica per source at a time; the others only report status.
"""

from __future__ import annotations

from rabbitmesh.amqp.remote import ClusterNotReady, check_not_ours, cluster_for
from rabbitmesh.hosted import hosted_kind
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.bridges import RabbitmqSource
from rabbitmesh.resources.duck import DeliverySpec
from rabbitmesh.resources.registry import canonical_kind
from rabbitmesh.resources.sources import (
    ApiServerSource,
    ContainerSource,
    GitLabSource,
    PingSource,
    Source,
)
from rabbitmesh.sources import apiserver, container, gitlab, ping, rabbitmq
from rabbitmesh.sources.manager import Key, Plan, Problem
from rabbitmesh.sources.secrets import NotReady, secrets_in

KINDS = (
    "PingSource",
    "ContainerSource",
    "ApiServerSource",
    "SinkBinding",
    "GitLabSource",
    "RabbitmqSource",
)
KIND = "PingSource"
ORDER = 80


async def reconcile(ctx: Context, source: Source) -> None:
    extra = source.status.model_extra
    assert extra is not None
    sink, ns = source.spec.sink, source.namespace
    if sink.ref is not None and hosted_kind(sink.ref.kind) is not None:
        ref_ns = sink.ref.namespace or ns
        if ctx.get(canonical_kind(sink.ref.kind), ref_ns, sink.ref.name) is None:
            _stop(ctx, source)
            extra.pop("sinkUri", None)
            source.status.set_ready(
                False,
                "NotFound",
                f"sink {sink.ref.kind} {sink.ref.name!r} does not exist in namespace {ref_ns!r}",
            )
            return
    url = ctx.resolve(sink, ns)
    extra["sinkUri"] = url
    if isinstance(source, ApiServerSource) and source.spec.namespace_selector is None:
        extra["namespaces"] = [ns]
    try:
        plan = make_plan(ctx, source, url)
    except NotReady as e:
        _stop(ctx, source)
        refresh(ctx, source, (e.reason, e.message))
        return
    if ctx.sources is not None:
        if plan is None:
            ctx.sources.remove(source.key, deleted=False)
        else:
            ctx.sources.run(plan)
    refresh(ctx, source)


def make_plan(ctx: Context, source: Source, sink: str) -> Plan | None:
    """What this source runs (None: nothing); NotReady when it cannot run."""
    s = ctx.settings
    if isinstance(source, PingSource):
        return ping.plan(source, sink, ctx.sender_auth(source, source.spec.sink, source.namespace))
    if isinstance(source, ContainerSource):
        secrets = secrets_in(ctx.get)
        return container.plan(
            source,
            sink,
            s.container_runtime,
            s.docker_args,
            secrets,
            allow_process=s.allow_process_runtime,
        )
    if isinstance(source, ApiServerSource):
        auth = ctx.sender_auth(source, source.spec.sink, source.namespace)
        return apiserver.plan(source, sink, s.kubeconfig, auth)
    if isinstance(source, GitLabSource):
        access, secret = gitlab.tokens(source, ctx.get)
        if access is None:
            return None  # no accessToken: the user registers the hook
        return gitlab.plan(source, s.base_url, access, secret)
    if isinstance(source, RabbitmqSource):
        cfg = source.spec.rabbitmq_resources_config
        try:
            cluster = cluster_for(
                ctx.get, source.namespace, source.connection_secret, cfg.vhost, s.amqp_url
            )
            check_not_ours(
                cluster,
                s.topology_prefix,
                {
                    "spec.rabbitmqResourcesConfig.queueName": cfg.queue_name,
                    "spec.rabbitmqResourcesConfig.exchangeName": cfg.exchange_name,
                },
            )
        except ClusterNotReady as e:
            raise NotReady(e.reason, e.message) from None
        policy = ctx.policy(source.spec.delivery or DeliverySpec(), source.namespace)
        auth = ctx.sender_auth(source, source.spec.sink, source.namespace)
        return rabbitmq.plan(source, sink, cluster, policy, auth)
    return None  # SinkBinding: `rabbitmesh sinkbinding exec` runs its subject


def refresh(ctx: Context, source: Resource, problem: Problem = None) -> None:
    """Status from what the source's runtime reports (also called when it reports), or from
    `problem` when it cannot run."""
    extra = source.status.model_extra
    assert extra is not None
    declared = source.declared_event_types()
    manager = ctx.sources
    runtime = manager.status(source.key) if manager is not None else {}
    ce_source = runtime.pop("ceSource", None)
    if declared:
        extra["ceAttributes"] = [{"type": t, "source": s or ce_source or ""} for t, s in declared]
    extra.update(runtime)
    if problem is None and manager is not None:
        problem = manager.problem(source.key)
    if problem is not None:
        source.status.set_ready(False, *problem)
    elif (
        isinstance(source, RabbitmqSource)
        and manager is not None
        and manager.leading(source.key)
        and "queue" not in runtime
    ):  # the replica that runs it says Ready once it consumes, not before
        source.status.set_ready(None, "Starting", "connecting to RabbitMQ, preparing the queue")
    elif manager is None and source.KIND != "SinkBinding":
        source.status.set_ready(
            True,
            "",
            f"runs on the replicas whose role is all or sources (this one: {ctx.settings.role})",
        )
    else:
        source.status.set_ready(True)


def on_runtime_change(ctx: Context, key: Key) -> None:
    """A running source reported (a problem, a hook id, a leadership change)."""
    source = ctx.get(*key)
    if source is not None and "sinkUri" in (source.status.model_extra or {}):
        refresh(ctx, source)


def _stop(ctx: Context, source: Source) -> None:
    if ctx.sources is not None:
        ctx.sources.remove(source.key, deleted=False)


async def finalize(ctx: Context, source: Source) -> None:
    """Stop its runtime; the replica that led it cleans up (a GitLab hook, a tick record)."""
    if ctx.sources is not None:
        ctx.sources.remove(source.key, deleted=True)
