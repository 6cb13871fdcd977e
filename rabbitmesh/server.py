"""`rabbitmesh run`: one process with the HTTP server, the reconciler and the dispatchers.

Start-up: HTTP first (so /healthz answers and /readyz says 503 while RabbitMQ is not there
yet), then RabbitMQ with logged retries, then the manifests. Shutdown (SIGTERM/SIGINT): stop
taking HTTP requests and let in-flight ones finish, stop consuming and let in-flight
deliveries finish, and only then close the AMQP connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rabbitmesh.amqp.client import AmqpClient
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.topology import Topology
from rabbitmesh.ingress.handlers import Ingress, Target
from rabbitmesh.metrics import REGISTRY
from rabbitmesh.reconciler.context import Context
from rabbitmesh.reconciler.controller import Controller
from rabbitmesh.resources.loader import ManifestError, load_path
from rabbitmesh.settings import Settings

log = logging.getLogger("rabbitmesh")

#: How often failed reconciles are retried.
RESYNC_SECONDS = 5.0


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = Names(settings.topology_prefix)
        self.publisher = AmqpClient(settings.amqp_url, "publisher", settings.publish_timeout)
        self.consumer = AmqpClient(settings.amqp_url, "consumer", settings.publish_timeout)
        self.ctx: Context | None = None
        self.controller: Controller | None = None
        self.reconciled = False
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self.bound_port: int | None = None

    # --- HTTP -----------------------------------------------------------------------------

    def lookup(self, kind: str, namespace: str, name: str) -> Target | None:
        ctx = self.ctx
        if ctx is None:
            return None
        res = ctx.get(kind, namespace, name)
        if res is None or res.status.ready != "True":
            return None
        if kind == "Broker":
            return Target(self.names.broker_exchange(namespace, name), is_broker=True)
        return None

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_event_bytes)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        ingress = Ingress(
            self.publisher,
            self.lookup,
            lambda: self.reconciled,
            self.settings.max_event_bytes,
            self.settings.retry_after_seconds,
        )
        if self.settings.role in ("all", "ingress"):
            app.add_routes(ingress.routes())
        return app

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def ready_problems(self) -> list[str]:
        problems = []
        if not self.publisher.connected:
            problems.append("not connected to RabbitMQ (publisher)")
        if self.settings.role in ("all", "dispatcher") and not self.consumer.connected:
            problems.append("not connected to RabbitMQ (consumer)")
        if not self.reconciled:
            problems.append("manifests from the config dir not reconciled yet")
        return problems

    async def readyz(self, _request: web.Request) -> web.Response:
        problems = self.ready_problems()
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.runner = web.AppRunner(
            self.build_app(), access_log=None, shutdown_timeout=s.shutdown_timeout
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.http_host, s.http_port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.bound_port = server.sockets[0].getsockname()[1]
        log.info("listening on http://%s:%s", s.http_host, self.bound_port or s.http_port)
        await asyncio.gather(self.publisher.connect(), self.consumer.connect())
        if self._stop.is_set():
            return
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60),
            auto_decompress=False,
        )
        topo_channel = await self.publisher.channel()
        topology = Topology(topo_channel, self.names)
        await topology.declare_infrastructure()
        self.ctx = Context(
            settings=s,
            names=self.names,
            publisher=self.publisher,
            consumer=self.consumer,
            topology=topology,
            session=self.session,
            run_dispatchers=s.role in ("all", "dispatcher"),
        )
        self.controller = Controller(self.ctx)
        await self.sync_config()

    def load_desired(self) -> list:
        path = Path(self.settings.config_dir)
        if not path.exists():
            log.warning("config dir %s does not exist; starting with no resources", path)
            return []
        return load_path(path)

    async def sync_config(self) -> None:
        assert self.controller is not None
        desired = self.load_desired()
        ok = await self.controller.apply_all(desired)
        self.reconciled = ok
        if ok:
            log.info("reconciled %d resources from %s", len(desired), self.settings.config_dir)

    async def resync_loop(self) -> None:
        """Retry reconciling until everything succeeded (e.g. RabbitMQ refused a declare)."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RESYNC_SECONDS)
            if self._stop.is_set() or self.controller is None:
                return
            if not self.reconciled and self.publisher.connected:
                try:
                    await self.sync_config()
                except ManifestError as e:
                    log.error("%s", e)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        starting = asyncio.create_task(self.start())
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # re-raise start-up errors (e.g. invalid manifests)
            resync = asyncio.create_task(self.resync_loop())
            await stop_wait
            resync.cancel()
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("shutting down: closing HTTP, finishing in-flight work")
        if self.runner is not None:
            await self.runner.cleanup()  # stops listening, waits for in-flight requests
        if self.controller is not None:
            await self.controller.stop()
        if self.session is not None:
            await self.session.close()
        await asyncio.gather(self.publisher.close(), self.consumer.close())
        log.info("stopped")
