"""Which RabbitMQ a bridge talks to: rabbitmesh's own, or another one named by a Secret.

A RabbitmqSource or RabbitmqSink names another RabbitMQ as eventing-rabbitmq does, with a
`connectionSecret` whose key `uri` holds an AMQP URL (`amqp://user:pass@host:5672/vhost`,
or `amqps://`). Without one, the bridge uses `RABBITMESH_AMQP_URL`. A `vhost` field replaces
the URL's virtual host.

Everything about "another RabbitMQ" is in this module (URL, vhost, TLS, and the shared
clients), so a future config module for other clusters has one place to plug into.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from rabbitmesh.amqp.client import AmqpClient, redact
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.core import Secret

#: The Secret key holding the AMQP URL, as eventing-rabbitmq's connectionSecret.
URI_KEY = "uri"

Lookup = Callable[[str, str, str], Resource | None]


class ClusterNotReady(Exception):
    """The connection Secret is missing or unusable: `reason`/`message` for Ready=False."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Cluster:
    """A RabbitMQ to connect to. `url` holds credentials: log `display` only."""

    url: str
    own: bool  # rabbitmesh's own RabbitMQ (RABBITMESH_AMQP_URL)

    @property
    def display(self) -> str:
        return redact(self.url)


def with_vhost(url: str, vhost: str | None) -> str:
    """`url` with its virtual host replaced (None or "" keeps the URL's)."""
    if not vhost:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def check_url(url: str, where: str) -> None:
    """Raise ClusterNotReady unless `url` is an amqp(s) URL with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ClusterNotReady(
            "InvalidConnectionSecret",
            f"{where} must be an amqp:// or amqps:// URL with a host",
        )


def cluster_for(
    get: Lookup,
    namespace: str,
    secret_name: str | None,
    vhost: str | None,
    own_url: str,
) -> Cluster:
    """The RabbitMQ a bridge in `namespace` uses; ClusterNotReady when its Secret is unusable.

    The Secret is read from the bridge's own namespace (as Kubernetes' secretKeyRef)."""
    if secret_name is None:
        return Cluster(with_vhost(own_url, vhost), own=True)
    secret = get("Secret", namespace, secret_name)
    value = secret.value(URI_KEY) if isinstance(secret, Secret) else None
    if value is None:
        raise ClusterNotReady(
            "SecretNotFound",
            f"Secret {namespace}/{secret_name} with key {URI_KEY!r} (the RabbitMQ URL) "
            "does not exist",
        )
    # The message names the Secret, never its value (it holds a password).
    check_url(value, f"key {URI_KEY!r} of Secret {namespace}/{secret_name}")
    return Cluster(with_vhost(value.strip(), vhost), own=False)


def check_not_ours(cluster: Cluster, prefix: str, names: dict[str, str | None]) -> None:
    """A bridge may not name rabbitmesh's own queues and exchanges (`{prefix}.*`): a
    RabbitmqSource on the resource store's queue would read every Secret, one bound to
    another namespace's broker exchange would read its events, and a RabbitmqSink publishing
    there would bypass that broker's ingress checks.

    On every RabbitMQ, not only when the bridge has no connection Secret: a Secret whose URL
    names rabbitmesh's own RabbitMQ (`localhost` for `127.0.0.1`, another DNS name, guest's
    well-known password) is no other RabbitMQ, and brokers of a RabbitmqBrokerConfig put
    rabbitmesh's names on other RabbitMQs too.

    `names`: field path -> the name it gives. Raises ClusterNotReady (`ReservedName`)."""
    del cluster  # which RabbitMQ does not matter (above)
    for path, name in names.items():
        if name is not None and (name == prefix or name.startswith(prefix + ".")):
            raise ClusterNotReady(
                "ReservedName",
                f"{path} {name!r}: names starting with {prefix + '.'!r} are rabbitmesh's own "
                "queues and exchanges (RABBITMESH_TOPOLOGY_PREFIX); a bridge may not use them",
            )


class Clients:
    """One AmqpClient per distinct RabbitMQ URL, shared by the bridges that use it.

    Never the process' own publisher: a bridge may publish to an exchange someone deletes,
    and the channel error that follows must not touch the connection every ingress shares.
    """

    def __init__(self, publish_timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.publish_timeout = publish_timeout
        self.ssl_context = ssl_context
        self._clients: dict[str, AmqpClient] = {}
        self._users: dict[str, set[tuple[str, str, str]]] = {}
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def acquire(self, cluster: Cluster, user: tuple[str, str, str]) -> AmqpClient:
        """The client for `cluster` (connecting in the background, with logged retries)."""
        for url in [u for u, users in self._users.items() if user in users and u != cluster.url]:
            self.release(url, user)
        client = self._clients.get(cluster.url)
        if client is None:
            tls = None
            if cluster.url.startswith("amqps://"):
                # Our own RabbitMQ's CA/client certificate settings; the system CAs elsewhere.
                tls = self.ssl_context if cluster.own else None
                tls = tls or ssl.create_default_context()
            name = f"bridge-{len(self._clients)}"
            client = AmqpClient(cluster.url, name, self.publish_timeout, tls)
            self._clients[cluster.url] = client
            self._connecting[cluster.url] = asyncio.create_task(client.connect())
        self._users.setdefault(cluster.url, set()).add(user)
        return client

    def release(self, url: str, user: tuple[str, str, str]) -> None:
        users = self._users.get(url)
        if users is None:
            return
        users.discard(user)
        if not users:
            del self._users[url]
            client = self._clients.pop(url)
            task = self._connecting.pop(url, None)
            if task is not None and not task.done():
                task.cancel()
            closing = asyncio.create_task(client.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def release_all(self, user: tuple[str, str, str]) -> None:
        for url in [u for u, users in self._users.items() if user in users]:
            self.release(url, user)

    async def close(self) -> None:
        for task in self._connecting.values():
            task.cancel()
        await asyncio.gather(
            *(c.close() for c in self._clients.values()), *self._closing, return_exceptions=True
        )
        self._clients.clear()
        self._users.clear()
