"""Connections to RabbitMQs (or vhosts) other than RABBITMESH_AMQP_URL.

A Broker whose RabbitmqBrokerConfig names another vhost or another RabbitMQ cluster
(rabbitmesh/config/brokers.py) has its exchange, its triggers' queues and their consumers
there. Each distinct URL gets one `Cluster`: a publisher connection (confirms), a pool of
consumer connections, and a Topology with the per-install objects (delay exchange, parked
queue) declared, because retries and dead letters must stay on the vhost of the queue they
came from. Connections are opened on first use and shared by every broker on that URL; the
resource store always stays on RABBITMESH_AMQP_URL.

This is the one module that connects anywhere else (RabbitmqSource/Sink may share it).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika

from rabbitmesh.amqp.client import AmqpClient, redact
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.pool import ConsumerPool
from rabbitmesh.amqp.topology import Topology
from rabbitmesh.settings import Settings
from rabbitmesh.tls import amqp_context

log = logging.getLogger("rabbitmesh.amqp")


class ClusterUnavailable(Exception):
    """The other RabbitMQ could not be reached or refused us; the reconcile is retried."""


@dataclass
class Cluster:
    """Where a broker's topology lives: one RabbitMQ vhost and rabbitmesh's clients of it."""

    url: str
    publisher: AmqpClient
    consumers: AmqpClient | ConsumerPool
    topology: Topology

    @property
    def label(self) -> str:
        return redact(self.url)


def with_vhost(url: str, vhost: str) -> str:
    """`url` with its vhost replaced (the path, percent-encoded: `/` is `%2F`)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def check_amqp_url(url: str) -> str | None:
    """Why `url` cannot be a RabbitMQ to connect to, or None."""
    try:
        parts = urlsplit(url)
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in ("amqp", "amqps"):
        return "must be an amqp:// or amqps:// URL (rabbitmesh talks AMQP, not the HTTP API)"
    if not parts.hostname:
        return "has no host"
    return None


class Clusters:
    """One Cluster per URL, the main one (RABBITMESH_AMQP_URL) included."""

    def __init__(self, settings: Settings, names: Names, main: Cluster) -> None:
        self.settings = settings
        self.names = names
        self.main = main
        self._others: dict[str, Cluster] = {}
        self._lock = asyncio.Lock()
        #: Called when a connection to another RabbitMQ came back (the control plane then
        #: reconciles everything again, as for its own connections: topology is not
        #: re-declared by aio-pika).
        self.on_reconnect: Callable[..., None] | None = None

    async def get(self, url: str | None) -> Cluster:
        """The Cluster for `url` (None or RABBITMESH_AMQP_URL: the main one), connected.

        Raises ClusterUnavailable when it cannot be reached within RABBITMESH_PUBLISH_TIMEOUT;
        the control plane retries the reconcile with backoff."""
        if url is None or url == self.main.url:
            return self.main
        cluster = self._others.get(url)
        if cluster is not None:
            return cluster
        async with self._lock:
            cluster = self._others.get(url)
            if cluster is None:
                cluster = await self._connect(url)
                self._others[url] = cluster
        return cluster

    def connected_cluster(self, url: str) -> Cluster | None:
        """The Cluster for `url` if it was connected already (no await: the ingress' hot
        path), else None."""
        return self.main if url == self.main.url else self._others.get(url)

    def _tls(self, url: str) -> ssl.SSLContext | None:
        if not url.lower().startswith("amqps://"):
            return None
        s = self.settings
        return amqp_context(s.amqp_ca_file, s.amqp_cert_file, s.amqp_key_file)

    async def _connect(self, url: str) -> Cluster:
        s, tls = self.settings, self._tls(url)
        # One plain attempt first: its error (refused, bad credentials, no such vhost) is
        # what the broker's status should say; the robust clients below would retry for ever.
        try:
            probe = await aio_pika.connect(url, ssl_context=tls, timeout=s.publish_timeout)
            await probe.close()
        except Exception as e:
            raise ClusterUnavailable(
                f"cannot connect to RabbitMQ at {redact(url)}: {type(e).__name__}: {e}"
            ) from None
        n = len(self._others) + 1
        publisher = AmqpClient(url, f"cluster{n}-publisher", s.publish_timeout, tls)
        consumers = ConsumerPool(
            lambda i: AmqpClient(url, f"cluster{n}-workers-{i}", s.publish_timeout, tls),
            s.channels_per_connection,
            s.consumers_per_channel,
        )
        try:
            async with asyncio.timeout(s.publish_timeout):
                await publisher.connect()
            if publisher.connection is not None and self.on_reconnect is not None:
                publisher.connection.reconnect_callbacks.add(self.on_reconnect)
            topology = await Topology.open(publisher.channel, self.names, s.queue_type)
            await topology.declare_infrastructure()
        except Exception as e:
            await publisher.close()
            raise ClusterUnavailable(
                f"cannot set up RabbitMQ at {redact(url)}: {type(e).__name__}: {e}"
            ) from None
        log.info("connected to another RabbitMQ for brokers: %s", redact(url))
        return Cluster(url, publisher, consumers, topology)

    @property
    def connected(self) -> bool:
        return all(
            c.publisher.connected
            and (not isinstance(c.consumers, ConsumerPool) or c.consumers.connected)
            for c in self._others.values()
        )

    def others(self) -> list[Cluster]:
        return list(self._others.values())

    async def close(self) -> None:
        for c in self._others.values():
            if isinstance(c.consumers, ConsumerPool):
                await c.consumers.close()
            await c.publisher.close()
        self._others.clear()
