"""`rabbitmesh run`: one process with the HTTP server, the reconciler and the dispatchers.

Start-up: HTTP first (so /healthz answers and /readyz says 503 while RabbitMQ is not there
yet), then RabbitMQ with logged retries, then the control plane (the resource store, the config
dir, the first reconcile: rabbitmesh/controlplane.py). Shutdown (SIGTERM/SIGINT): stop
taking HTTP requests and let in-flight ones finish, stop consuming and let in-flight
deliveries finish, and only then close the AMQP connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from rabbitmesh import telemetry, unknown_paths
from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.clusters import Cluster, Clusters
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.pool import ConsumerPool
from rabbitmesh.amqp.remote import Clients
from rabbitmesh.amqp.topology import Topology
from rabbitmesh.api.routes import AdminApi
from rabbitmesh.auth.gate import Gate, Mode
from rabbitmesh.auth.issuer import DISCOVERY_PATH, JWKS_PATH, Issuer, load_key_file, shared_key
from rabbitmesh.auth.policies import PolicyIndex
from rabbitmesh.auth.verify import DiscoveredKeys, FileKeys, KeySource, StaticKeys, Verifier
from rabbitmesh.config.effective import Effective, Value
from rabbitmesh.console.routes import Console
from rabbitmesh.console.tail import Tails
from rabbitmesh.controlplane import ControlPlane
from rabbitmesh.dataplane import Target
from rabbitmesh.http_input import close_after_unread_body
from rabbitmesh.ingress.eventtransform import EventTransforms
from rabbitmesh.ingress.handlers import Ingress
from rabbitmesh.ingress.requestreply import RequestReplies
from rabbitmesh.jobs.runner import JobRunner
from rabbitmesh.listen import ListenError, cannot_listen
from rabbitmesh.metrics import REGISTRY
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.controller import Controller
from rabbitmesh.reconciler.hosted import ingress_target, not_ready_reason
from rabbitmesh.reconciler.jobsink import show_runs as job_status
from rabbitmesh.reconciler.sources import on_runtime_change as source_status
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.eventing_v1alpha1 import EventTransform
from rabbitmesh.resources.sources import GitLabSource
from rabbitmesh.settings import Settings
from rabbitmesh.sources.gitlab import GitLabWebhooks
from rabbitmesh.sources.manager import SourceManager
from rabbitmesh.sources.secrets import secrets_in
from rabbitmesh.tls import server_context
from rabbitmesh.workers import EARLY, READY, STOPPING, Siblings, WorkerInfo

log = logging.getLogger("rabbitmesh")
#: config-features flags whose change is logged as a WARNING (see _log_security_flags).
SECURITY_FLAGS = (
    "authentication-oidc",
    "default-authorization-mode",
    "cross-namespace-event-links",
    "transport-encryption",
)

#: Allocations between two young-generation collections (CPython's default is 700). At
#: thousands of events a second the default ran a collection every few requests, and the
#: older generations' collections (walking every object of the process, the reconciled
#: resources included) stalled the loop for tens of milliseconds: the p99 of issue 18.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """After start-up: move what exists now (modules, resources, connections) out of the
    collector's sight (`gc.freeze`), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The SECURITY_FLAGS in force at the last reconcile (None: none yet).
        self._security_flags: dict[str, Value[str]] | None = None
        self.names = Names(settings.topology_prefix)
        amqp_tls = settings.amqp_ssl_context()
        max_msg = settings.max_message_bytes
        self.publisher = AmqpClient(
            settings.amqp_url, "publisher", settings.publish_timeout, amqp_tls, max_msg
        )
        self.consumer = AmqpClient(
            settings.amqp_url, "consumer", settings.publish_timeout, amqp_tls, max_msg
        )
        # Queue workers' channels: connections of their own, opened as they fill up (the
        # consumer connection above is the resource store's).
        self.consumers = ConsumerPool(
            lambda i: AmqpClient(
                settings.amqp_url, f"workers-{i}", settings.publish_timeout, amqp_tls, max_msg
            ),
            settings.channels_per_connection,
            settings.consumers_per_channel,
        )
        self.ctx: Context | None = None
        self.controller: Controller | None = None
        self.plane: ControlPlane | None = None
        self.reconciled = False
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self.bound_port: int | None = None
        self.admin = AdminApi(lambda: self.plane, settings)
        #: Set when this process is one of `rabbitmesh run`'s workers (rabbitmesh/workers.py).
        self.worker = WorkerInfo.from_env()
        if self.worker is not None and self.worker.count > 1 and settings.concurrency > 1:
            # RABBITMESH_CONCURRENCY and RABBITMESH_PREFETCH bound one trigger's deliveries
            # for the whole run, as with one process: each worker takes its share (rounded
            # up), so a hanging subscriber ties up no more than the operator allowed.
            n = self.worker.count
            self.settings = settings.model_copy(
                update={
                    "concurrency": -(-settings.concurrency // n),
                    "prefetch": -(-settings.prefetch // n),
                }
            )
        self.siblings = (
            Siblings(self.worker.directory / "siblings", self.worker.count, self.worker.index)
            if self.worker is not None
            else None
        )
        self._site: web.TCPSite | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.requestreplies = RequestReplies(
            self.publisher,
            self.consumer,
            self.names,
            settings,
            self._resources,
            lambda: self.session,
            self._gate,
        )
        self.transforms = EventTransforms(
            settings, self._resources, lambda: self.session, self._gate, self._transform_auth
        )

    # --- HTTP -----------------------------------------------------------------------------

    def lookup(self, kind: str, namespace: str, name: str) -> Target | None:
        ctx = self.ctx
        if ctx is None:
            return None
        return ingress_target(ctx, kind, namespace, name)

    def not_ready(self, kind: str, namespace: str, name: str) -> str | None:
        ctx = self.ctx
        return None if ctx is None else not_ready_reason(ctx, kind, namespace, name)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_event_bytes)
        app.on_response_prepare.append(close_after_unread_body)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        ingress = Ingress(
            self.publisher,
            self.lookup,
            lambda: self.reconciled,
            self.settings.max_event_bytes,
            self.settings.retry_after_seconds,
            max_batch_events=self.settings.max_batch_events,
            max_json_depth=self.settings.max_json_depth,
            max_inflight=self.settings.max_inflight_publishes,
            request_timeout=self.settings.request_timeout,
            not_ready=self.not_ready,
        )
        # The admin API first: the ingress' `/{namespace}/{name}` must not catch its paths.
        app.add_routes(self.admin.routes())
        # rabbitmesh's issuer documents, also first; always routed (404 while
        # authentication-oidc is off): config-features can switch it on while running.
        app.router.add_get(DISCOVERY_PATH, self._oidc_document)
        app.router.add_get(JWKS_PATH, self._oidc_document)
        if self.settings.console:
            app.add_routes(self.console().routes())
        if self.settings.role in ("all", "ingress", "sources"):
            webhooks = GitLabWebhooks(
                self._resources,
                lambda: self.session,
                max_body_bytes=self.settings.max_event_bytes,
                request_timeout=self.settings.request_timeout,
                auth=self._source_auth,
            )
            app.add_routes(webhooks.routes())
        if self.settings.role in ("all", "ingress"):
            # Before the ingress' routes: its `/{namespace}/{name}` must not catch theirs.
            app.add_routes(self.transforms.routes())
            app.add_routes(self.requestreplies.routes())
            app.add_routes(ingress.routes())
            # Installed always: config-features can switch auto-creation on while running;
            # while it is off the middleware costs one attribute check per request.
            app.middlewares.append(self._observe_event_types)
        app.add_routes([unknown_paths.catch_all()])  # last: JSON 404/405 for the rest
        return app

    def console(self) -> Console:
        s = self.settings
        tails = Tails(
            self.names,
            lambda prefetch: self.consumers.channel(prefetch=prefetch),
            lambda: self.plane.resource if self.plane is not None else (lambda *_: None),
            max_tails=s.console_max_tails,
            rate=s.console_tail_rate,
            request_timeout=s.request_timeout,
        )
        return Console(lambda: self.plane, s, tails)

    def _source_auth(self, source: GitLabSource) -> Callable[[], dict[str, str] | None] | None:
        """A webhook-driven source's identity for its sink (authentication-oidc), else None."""
        ctx = self.ctx
        if ctx is None:
            return None
        return ctx.sender_auth(source, source.spec.sink, source.namespace)

    def _transform_auth(self, res: EventTransform) -> Callable[[], dict[str, str] | None] | None:
        """An EventTransform's identity for its sink (authentication-oidc), else None."""
        ctx = self.ctx
        if ctx is None or res.spec.sink is None:
            return None
        return ctx.sender_auth(res, res.spec.sink, res.namespace)

    def _gate(self) -> Gate | None:
        """The ingress' sender check, for the endpoint kinds (None: authentication-oidc off)."""
        return self.ctx.gate if self.ctx is not None else None

    def _dispatches(self) -> bool:
        """FIFO (concurrency 1) needs one consumer per queue: only the first worker then."""
        return self.worker is None or self.worker.index == 0 or self.settings.concurrency > 1

    def _resources(self) -> Callable[[str, str, str], Resource | None] | None:
        """Reconciled resources, for the GitLab webhook (None until the first reconcile)."""
        return self.ctx.get if self.ctx is not None and self.reconciled else None

    @web.middleware
    async def _observe_event_types(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        plane = self.plane
        if plane is None or plane.autotypes is None or not plane.autotypes_enabled:
            return await handler(request)
        return await plane.autotypes.middleware(request, handler)

    async def _oidc_document(self, request: web.Request) -> web.Response:
        issuer = self.ctx.issuer if self.ctx is not None else None
        if issuer is None:
            if self.reconciled:
                return web.json_response(
                    {"error": "authentication-oidc is disabled: rabbitmesh issues no tokens"},
                    status=404,
                )
            return web.json_response({"error": "starting up"}, status=503)
        if request.path == JWKS_PATH:
            return web.json_response(issuer.jwks)
        return web.json_response(issuer.discovery())

    async def healthz(self, _request: web.Request) -> web.Response:
        if self.worker is not None:  # which process answered (rabbitmesh/workers.py)
            return web.json_response({"status": "ok", "worker": self.worker.index})
        return web.json_response({"status": "ok"})

    def ready_problems(self) -> list[str]:
        problems = []
        if not self.publisher.connected:
            problems.append("not connected to RabbitMQ (publisher)")
        dispatching = self.settings.role in ("all", "dispatcher")
        if dispatching and not (self.consumer.connected and self.consumers.connected):
            problems.append("not connected to RabbitMQ (consumer)")
        if not self.reconciled:
            problems.append(
                "resource store not read, or config dir not applied and reconciled, yet"
            )
        if self.siblings is not None:  # a request may land on a worker still starting
            problems += [f"worker {i} not ready yet" for i in self.siblings.starting_early()]
        return problems

    async def readyz(self, _request: web.Request) -> web.Response:
        problems = self.ready_problems()
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, _request: web.Request) -> web.Response:
        registry = REGISTRY
        if self.worker is not None:  # every worker's figures, summed (multiprocess mode)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self.worker.metrics_dir))
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        telemetry.configure_exporter()
        self.runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            shutdown_timeout=s.shutdown_timeout,
            # aiohttp's own limits answer 400 past 128 headers or 8190-byte header lines;
            # idle keep-alive connections are closed after 75 s instead of an hour.
            keepalive_timeout=75.0,
        )
        await self.runner.setup()
        if self.worker is None or self.worker.early:
            # The first (or only) process listens at once: /healthz answers and /readyz says
            # 503 while RabbitMQ is not there. Other workers join the port once ready.
            await self._listen()
            if self.siblings is not None:
                self.siblings.mark(state=EARLY)
        await asyncio.gather(self.publisher.connect(), self.consumer.connect())
        if self._stop.is_set():
            return
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60),
            auto_decompress=False,
        )
        topology = await Topology.open(self.publisher.channel, self.names, s.queue_type)
        await topology.declare_infrastructure()
        self.ctx = Context(
            settings=s,
            names=self.names,
            publisher=self.publisher,
            consumer=self.consumers,
            topology=topology,
            session=self.session,
            run_dispatchers=s.role in ("all", "dispatcher") and self._dispatches(),
            bridge_clients=Clients(s.publish_timeout, self.publisher.ssl_context),
        )
        if s.role in ("all", "ingress"):
            self.ctx.requestreplies = self.requestreplies
        ctx_ = self.ctx
        self.ctx.jobs = JobRunner(
            s,
            self.names,
            self.publisher,
            self.consumer,
            secrets_in(ctx_.get),
            lambda job: job_status(ctx_, job),
            consume=s.role in ("all", "dispatcher"),
        )
        if s.authentication_oidc:
            await self._start_oidc(self.ctx)
        # Brokers a RabbitmqBrokerConfig places on another vhost or RabbitMQ connect there.
        clusters = Clusters(
            s, self.names, Cluster(s.amqp_url, self.publisher, self.consumers, topology)
        )
        self.ctx.clusters = clusters
        if s.role in ("all", "sources"):
            sources = SourceManager(s, self.names, self.session, self.publisher.ssl_context)
            ctx = self.ctx
            sources.on_change = lambda key: source_status(ctx, key)
            sources.start()
            ctx.sources = sources
        self.controller = Controller(
            self.ctx,
            s.reconcile_concurrency,
            (self.worker.index, self.worker.count) if self.worker is not None else (0, 1),
        )
        self.plane = ControlPlane(
            s,
            self.names,
            self.publisher,
            self.consumer,
            self.ctx,
            self.controller,
            on_ready=self._on_ready,
            siblings=self.siblings,
            on_features=self._apply_features,
        )
        clusters.on_reconnect = self._other_rabbitmq_back
        await self.plane.start()

    async def _apply_features(self) -> bool:
        """config-features' authentication-oidc (then RABBITMESH_AUTHENTICATION_OIDC, as
        rabbitmesh/config/effective.py orders them) switches the sender check and
        rabbitmesh's issuer on or off while running; True when it changed."""
        ctx = self.ctx
        if ctx is None:
            return False
        eff = ctx.effective()
        self._log_security_flags(eff)
        flag = eff.feature("authentication-oidc")
        wanted = flag.value == "enabled"
        mode = cast(Mode, eff.feature("default-authorization-mode").value)
        if ctx.gate is not None:
            ctx.gate.mode = mode  # read per request: no resync needed
        if wanted == (ctx.gate is not None):
            return False
        if wanted:
            try:
                await self._start_oidc(ctx)
            except Exception as e:  # RabbitMQ away (the shared key): the next batch retries
                log.warning("authentication-oidc could not be switched on: %s", e)
                return False
        else:
            ctx.gate = None
            ctx.issuer = None
        log.warning(
            "authentication-oidc is now %s (%s): sender checks %s",
            flag.value,
            flag.source,
            "enforced" if wanted else "off, EventPolicies enforce nothing",
        )
        return True

    def _log_security_flags(self, eff: Effective) -> None:
        """One WARNING line for each change of a flag that loosens or tightens who may send
        what where (a ConfigMap applied through the API wins over the operator's settings):
        before, only authentication-oidc itself was logged, and a switch of
        default-authorization-mode from deny-all to allow-all left no trace but
        `ConfigMap ... configured`."""
        now = {name: eff.feature(name) for name in SECURITY_FLAGS}
        before, self._security_flags = self._security_flags, now
        if before is None:
            return
        for name, value in now.items():
            old = before[name]
            if old.value != value.value:
                log.warning(
                    "%s is now %s (%s; was %s from %s)",
                    name,
                    value.value,
                    value.source,
                    old.value,
                    old.source,
                )

    async def _start_oidc(self, ctx: Context) -> None:
        """rabbitmesh's issuer (its key from the file, or the install's key in RabbitMQ), and
        the ingress gate trusting it and RABBITMESH_OIDC_ISSUER."""
        s = self.settings
        assert self.session is not None
        if s.oidc_signing_key_file is not None:
            key = load_key_file(s.oidc_signing_key_file)
        else:
            key = await shared_key(self.publisher, self.names.prefix + ".oidc-signing-key")
        issuer = Issuer(s.base_url, key)
        verifier = Verifier({issuer.issuer: StaticKeys(issuer.jwks)})
        if s.oidc_issuer is not None:
            external: KeySource = (
                FileKeys(s.oidc_jwks_file)
                if s.oidc_jwks_file is not None
                else DiscoveredKeys(s.oidc_issuer, self.session)
            )
            verifier.trust(s.oidc_issuer, external)
        ctx.issuer = issuer
        mode = cast(Mode, ctx.effective().feature("default-authorization-mode").value)
        ctx.gate = Gate(verifier, PolicyIndex(lambda: ctx.resources.values()), mode)

    async def _listen(self) -> None:
        s = self.settings
        assert self.runner is not None
        https = None
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            https = server_context(s.tls_cert_file, s.tls_key_file)
        site = web.TCPSite(
            self.runner,
            s.http_host,
            s.http_port,
            ssl_context=https,
            # Workers share the port; the kernel spreads connections over them.
            reuse_port=self.worker is not None or None,
        )
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            self.runner = None
            raise cannot_listen(
                e,
                s.http_host,
                s.http_port,
                "set RABBITMESH_HTTP_PORT or --http-port for another port, "
                "RABBITMESH_HTTP_HOST or --http-host for another address",
            ) from None
        self._site = site
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.bound_port = server.sockets[0].getsockname()[1]
        log.info(
            "listening on %s://%s:%s%s",
            "https" if https else "http",
            s.http_host,
            self.bound_port or s.http_port,
            f" (worker {self.worker.index} of {self.worker.count})" if self.worker else "",
        )

    def _other_rabbitmq_back(self, *_: object) -> None:
        if self.plane is not None:
            self.plane.resync()

    def _on_ready(self) -> None:
        self.reconciled = True
        if self.siblings is not None:
            self.siblings.mark(state=READY)
        if self._site is None and self.runner is not None:
            task = asyncio.create_task(self._listen_late(), name="listen")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _listen_late(self) -> None:
        try:
            await self._listen()
        except ListenError as e:
            log.error("%s", e)
            self._stop.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        starting = asyncio.create_task(self.start())
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            if isinstance(starting.exception(), ListenError):  # nothing else started yet
                starting.result()
            if starting.exception() is not None:  # e.g. invalid manifests: stop, then raise
                await self.shutdown()
                starting.result()
            tune_gc()
            if self.plane is not None:
                await self.plane.run(self._stop)  # reconcile loop, config dir watch, ...
            await stop_wait
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("shutting down: closing HTTP, finishing in-flight work")
        if self.siblings is not None and self.reconciled:
            self.siblings.mark(state=STOPPING)  # siblings' writes no longer wait for this one
        if self.ctx is not None and self.ctx.sources is not None:
            await self.ctx.sources.stop()  # first: their leases go to the other replicas
        if self.runner is not None:
            await self.runner.cleanup()  # stops listening, waits for in-flight requests
        self.admin.close()
        if self.plane is not None:
            await self.plane.stop()
        if self.controller is not None:
            await self.controller.stop()
        if self.ctx is not None and self.ctx.jobs is not None:
            await self.ctx.jobs.close()  # runs in progress finish within shutdown_timeout
        await self.requestreplies.close()
        if self.session is not None:
            await self.session.close()
        await self.consumers.close()
        if self.ctx is not None:
            await self.ctx.bridge_clients.close()
        if self.ctx is not None and self.ctx.clusters is not None:
            await self.ctx.clusters.close()
        await asyncio.gather(self.publisher.close(), self.consumer.close())
        if self.siblings is not None:
            self.siblings.close()
        log.info("stopped")
