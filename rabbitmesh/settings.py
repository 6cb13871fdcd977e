"""Process settings, read from `RABBITMESH_*` environment variables (docs/contract.md §1).

Every field here is also a `rabbitmesh run` flag (`--http-port` for `RABBITMESH_HTTP_PORT`),
and `docs/configuration.md` is generated from this model, so a new setting is documented and
overridable by adding it here alone.
"""

from __future__ import annotations

import shlex
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import AnyUrl, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rabbitmesh.durations import parse_duration
from rabbitmesh.tls import amqp_context, server_context

Role = Literal["all", "ingress", "dispatcher", "sources"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RABBITMESH_", extra="ignore", frozen=True)

    amqp_url: str = Field(
        "amqp://guest:guest@localhost:5672/",
        description="RabbitMQ to use (amqp:// or amqps:// for TLS).",
    )
    http_host: str = Field("0.0.0.0", description="HTTP listen address.")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP listen port (0 = any free port)."
    )
    config_dir: Path = Field(
        Path("./config"),
        description="Directory of YAML manifests applied at start and again when a file changes.",
    )
    public_url: str | None = Field(
        None,
        description="Base of every status.address.url; default http://localhost:<http_port>.",
    )
    service_url_template: str = Field(
        "http://{name}",
        description="How a ref to a kind rabbitmesh does not host becomes a URL "
        "({name} and {namespace} are filled in).",
    )
    topology_prefix: str = Field(
        "rabbitmesh",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Prefix of every exchange and queue name.",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="Type of the queues rabbitmesh declares (trigger/subscription queues, "
        "their :dlq, delay and parked queues). `quorum` replicates them across a RabbitMQ "
        "cluster (x-queue-type quorum) and adds x-delivery-limit and at-least-once "
        "dead-lettering to delivery queues. Existing queues keep their type: change it only "
        "with a new RABBITMESH_TOPOLOGY_PREFIX or after deleting them (docs/operations.md).",
    )
    max_event_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    max_message_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description="Largest message body rabbitmesh publishes to RabbitMQ; set it to the "
        "broker's `max_message_size` (RabbitMQ's default is 128 MiB). A larger message is "
        "refused before it is sent (a reply: a failed delivery, dead-lettered), because "
        "RabbitMQ would close the publish channel every publisher shares.",
    )
    max_batch_events: int = Field(
        1000, ge=1, description="Batched requests with more events get 413."
    )
    max_json_depth: int = Field(
        64,
        ge=2,
        le=250,
        description="Deepest nesting of JSON arrays and objects ingress accepts (the outermost "
        "counts as 1) in a structured event, a batch, or binary-mode data with a JSON content "
        "type; deeper gets 400.",
    )
    max_inflight_publishes: int = Field(
        4096,
        ge=1,
        description="Events being published and not yet confirmed, across all requests; past "
        "this, ingress answers 503 with Retry-After instead of queueing in memory.",
    )
    request_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client may take to send a request body; slower ones get 408.",
    )
    admin_token: str | None = Field(
        None, description="When set, admin API mutations need Authorization: Bearer <token>."
    )
    admin_trust_loopback: bool = Field(
        True,
        description="Without RABBITMESH_ADMIN_TOKEN, accept admin API changes from loopback "
        "clients. Turn off when a reverse proxy, sidecar, tunnel or other users share the "
        "host: then changes need the token, and with no token none are accepted "
        "(docs/security.md).",
    )
    max_manifest_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest admin API request body (a manifest, or many for /apply); larger "
        "ones get 413.",
    )
    manifest_parse_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds an admin API body may take to parse and validate (in a worker "
        "process, off the event loop); longer ones are stopped and get 413.",
    )
    console: bool = Field(
        True,
        description="Serve the web console at /console (docs/console.md); its changes go "
        "through the admin API's checks.",
    )
    console_max_tails: int = Field(
        4,
        ge=0,
        le=1000,
        description="Console live tails open at once (each a temporary RabbitMQ queue); more "
        "get 429. 0 turns the tail off.",
    )
    console_tail_rate: float = Field(
        20.0,
        gt=0,
        le=10000,
        description="Events per second one console tail sends to the browser at most; the "
        "rest are counted as skipped.",
    )
    # TLS (docs/security.md).
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) of the HTTP server; with RABBITMESH_TLS_KEY_FILE "
        "it serves HTTPS only.",
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of RABBITMESH_TLS_CERT_FILE."
    )
    amqp_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle that RabbitMQ's certificate must chain to (amqps:// only); "
        "default: the system's CAs.",
    )
    amqp_cert_file: Path | None = Field(
        None,
        description="PEM client certificate offered to RabbitMQ (amqps:// only), with "
        "RABBITMESH_AMQP_KEY_FILE.",
    )
    amqp_key_file: Path | None = Field(
        None, description="PEM private key of RABBITMESH_AMQP_CERT_FILE."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json` gives one JSON object per line."
    )
    role: Role = Field("all", description="Which parts this process runs.")
    workers: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Worker processes sharing the HTTP port, each a full replica (Python "
        "uses one core per process); default: one per CPU core available. 1 runs a single "
        'process with no supervisor (docs/operations.md, "Workers").',
    )

    # Data plane tuning.
    prefetch: int = Field(
        256, ge=1, le=65535, description="Unacked messages a trigger's consumer may hold."
    )
    concurrency: int = Field(
        64,
        ge=1,
        le=10000,
        description="Deliveries in flight per trigger/subscription; 1 gives FIFO order.",
    )
    channels_per_connection: int = Field(
        500,
        ge=1,
        le=2000,
        description="Queue workers' AMQP channels per RabbitMQ connection; past this another "
        "connection is opened (RabbitMQ's default channel_max is 2047).",
    )
    consumers_per_channel: int = Field(
        16,
        ge=1,
        le=256,
        description="Queue workers (trigger and subscription queues, their dead-letter queues) "
        "that consume on one AMQP channel. A channel costs ~22 KB in each worker process and a "
        "process in RabbitMQ; sharing it keeps 5,000 triggers in memory. Each worker keeps its "
        "own prefetch and order; a channel error (rare: a queue deleted under a consume) "
        "redelivers the unacknowledged events of the workers on that channel. 1: a channel "
        "each.",
    )
    publish_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for a publisher confirm before answering 503."
    )
    shutdown_timeout: float = Field(
        30.0, gt=0, description="Seconds a graceful shutdown waits for in-flight work."
    )
    max_watches: int = Field(
        256,
        ge=1,
        description="Admin API watch streams (`?watch=true`, `rabbitmesh get -w`) open at "
        "once; more get 429 with Retry-After. Watching is a read, open to anyone who can "
        "reach the port, and each stream is sent every change.",
    )
    retry_after_seconds: int = Field(2, ge=1, description="Retry-After sent with 503 answers.")

    # Knative's config-br-defaults / config-delivery equivalents.
    default_retry: int = Field(10, ge=0, description="Retries when no delivery spec sets them.")
    default_backoff_policy: Literal["exponential", "linear"] = Field(
        "exponential", description="Backoff policy when no delivery spec sets one."
    )
    default_backoff_delay: str = Field(
        "PT0.2S", description="Backoff delay (ISO-8601) when no delivery spec sets one."
    )
    default_delivery_timeout: str = Field(
        "PT5M",
        description="Longest a delivery attempt may take (ISO-8601) when no delivery spec "
        "sets `timeout`: Knative Serving's default request timeout. Without one, a subscriber "
        "that accepts the request and never answers held the event (and its prefetch slot) "
        "for ever, unretried. `PT0S` means no limit.",
    )
    default_dead_letter_sink: str | None = Field(
        None,
        description="Dead-letter sink URL of triggers whose trigger and broker set none "
        "(config-br-defaults' delivery.deadLetterSink).",
    )
    replay_rate: float = Field(
        500.0,
        gt=0,
        description="Events per second one Replay sends at most, so live traffic keeps "
        "flowing while it runs (docs/replay.md).",
    )
    dead_letter_retention: str = Field(
        "P7D",
        description="How long (ISO-8601) events that failed for good are kept in their "
        "trigger's or subscription's dead-letter store for `rabbitmesh deadletter list` and "
        "`redrive` when no dead-letter sink took them; PT0S drops them, as Knative does "
        "(docs/delivery.md).",
    )

    # Control plane: the resource store and the EventType registry.
    store_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Size the resource store stream is kept under (x-max-length-bytes); set "
        "when the stream is first created (docs/control-plane.md).",
    )
    resync_interval: float = Field(
        300.0,
        ge=0,
        description="Seconds between two full reconciles of every resource, which repair drift "
        "(a queue deleted by hand); 0 turns them off. Changes are reconciled as they come, "
        "one resource and its dependents at a time.",
    )
    reconcile_concurrency: int = Field(
        8,
        ge=1,
        le=256,
        description="Resources the control plane reconciles at once.",
    )
    eventtype_auto_create: bool = Field(
        False,
        description="Register an EventType for each (type, source) seen at a broker or "
        "channel ingress, as Knative's eventtype-auto-create feature.",
    )
    eventtype_auto_create_max_per_broker: int = Field(
        1000,
        ge=0,
        description="Most auto-created EventTypes one broker (or channel) may have; types "
        "seen past this are not registered (metric eventtype_auto_create_refused).",
    )
    eventtype_auto_create_per_minute: int = Field(
        60,
        ge=0,
        description="Most EventTypes auto-created per broker (or channel) per minute, a burst "
        "included; the others wait until their type is seen again.",
    )

    # Sources (docs/sources.md).
    container_runtime: Literal["process", "docker"] = Field(
        "process",
        description="How ContainerSources run their containers: `process` runs command + "
        "args on this host, `docker` runs the image through the Docker CLI. A source whose "
        "`rabbitmesh.dev/runtime` annotation asks for the other one is not run (not Ready, "
        "`RuntimeNotAllowed`).",
    )
    allow_process_runtime: bool = Field(
        True,
        description="Allow the `process` runtime. With `false`, no ContainerSource runs a "
        "command on this host (they are not Ready unless RABBITMESH_CONTAINER_RUNTIME is "
        "`docker`); whoever may change resources can otherwise run any command as "
        "rabbitmesh's user (docs/security.md).",
    )
    docker_args: str = Field(
        "--network host",
        description="Extra `docker run` arguments for the docker runtime (shell-quoted); "
        "host networking lets a container reach K_SINK URLs on localhost.",
    )
    jsonata_timeout_ms: int = Field(
        100,
        ge=1,
        le=60_000,
        description="Longest an EventTransform's JSONata expression may run on one event "
        "(milliseconds); past it the delivery fails (422), as for a failing expression.",
    )
    requestreply_secret: str | None = Field(
        None,
        min_length=16,
        description="Key (at least 16 characters) that signs RequestReply correlation ids "
        "(HMAC-SHA256). Unset: each replica makes a random one at start, which is enough "
        "because only the replica that issued an id ever checks it (docs/requestreply.md).",
    )
    requestreply_max_pending: int = Field(
        10_000,
        ge=1,
        description="RequestReply requests one replica holds open at once; more get 503.",
    )
    jobsink_parallelism: int = Field(
        4,
        ge=1,
        le=1000,
        description="JobSink runs one replica starts at once per JobSink; further events "
        "wait, durably queued in RabbitMQ.",
    )
    jobsink_history: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Finished runs per JobSink kept for `rabbitmesh jobsink runs` and status.",
    )
    kubeconfig: Path | None = Field(
        None,
        description="kubeconfig ApiServerSources watch with; default $KUBECONFIG, else "
        "~/.kube/config, else the in-cluster service account.",
    )
    authentication_oidc: bool = Field(
        False,
        description="Knative's `authentication-oidc` feature: senders prove who they are with a "
        "bearer JWT (audience = the target's status.address.audience), EventPolicies decide "
        "who may send, and rabbitmesh's own deliveries carry tokens it signs itself "
        "(docs/security.md#sender-identity-oidc-and-eventpolicy). The `authentication-oidc` "
        "flag of the knative-eventing/config-features ConfigMap, when set, wins over this "
        "and switches it while running.",
    )
    oidc_issuer: str | None = Field(
        None,
        description="An OIDC issuer whose tokens are trusted (its `iss`, an https URL; its keys "
        "come from its /.well-known/openid-configuration, or from RABBITMESH_OIDC_JWKS_FILE). "
        "rabbitmesh's own tokens (issuer RABBITMESH_PUBLIC_URL) are always trusted.",
    )
    oidc_jwks_file: Path | None = Field(
        None,
        description="The JWKS of RABBITMESH_OIDC_ISSUER as a file, instead of discovery over "
        "HTTP (re-read when it changes).",
    )
    oidc_signing_key_file: Path | None = Field(
        None,
        description="PEM private key (EC P-256 or RSA) rabbitmesh signs its own tokens with; "
        "unset: one is generated once and kept in RabbitMQ, shared by every replica.",
    )
    default_authorization_mode: Literal["allow-all", "allow-same-namespace", "deny-all"] = Field(
        "allow-same-namespace",
        description="With authentication_oidc, what a target no EventPolicy applies to "
        "accepts (Knative's `default-authorization-mode`): anyone (no token needed), "
        "valid tokens of its own namespace's identities, or nothing. The "
        "`default-authorization-mode` flag of config-features, when set, wins over this.",
    )
    cross_namespace_event_links: bool = Field(
        False,
        description="Knative's `cross-namespace-event-links`: a Trigger's spec.brokerRef and a "
        "Subscription's spec.channel may name another namespace; refused (not Ready) otherwise.",
    )

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, v: str) -> str:
        url = AnyUrl(v)
        if url.scheme not in ("amqp", "amqps"):
            raise ValueError("must start with amqp:// or amqps://")
        return v

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        url = AnyUrl(v)
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL (the tokens' `iss`)")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        url = AnyUrl(v)
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("default_dead_letter_sink")
    @classmethod
    def _dead_letter_sink(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        url = AnyUrl(v)
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("docker_args")
    @classmethod
    def _docker_args(cls, v: str) -> str:
        shlex.split(v)  # ValueError (unbalanced quotes) names the variable
        return v

    @field_validator("default_backoff_delay", "default_delivery_timeout", "dead_letter_retention")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _template(self) -> Settings:
        try:
            self.service_url_template.format(name="n", namespace="ns")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"service_url_template: only {{name}} and {{namespace}} may be used ({e})"
            ) from e
        return self

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        """Pairs set together, amqps-only files only with amqps://, and files that load:
        a bad certificate stops start-up with one line, not at the first connection."""
        pairs = (("tls_cert_file", "tls_key_file"), ("amqp_cert_file", "amqp_key_file"))
        for cert, key in pairs:
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(
                    f"RABBITMESH_{cert.upper()} and RABBITMESH_{key.upper()} go together"
                )
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            server_context(self.tls_cert_file, self.tls_key_file)
        amqp_files = ("amqp_ca_file", "amqp_cert_file")
        if not self.amqp_tls:
            for name in amqp_files:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"RABBITMESH_{name.upper()} needs an amqps:// RABBITMESH_AMQP_URL"
                    )
        else:
            amqp_context(self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file)
        return self

    @property
    def amqp_tls(self) -> bool:
        return self.amqp_url.lower().startswith("amqps://")

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_cert_file is not None else "http"
        return self.public_url or f"{scheme}://localhost:{self.http_port}"

    def amqp_ssl_context(self) -> ssl.SSLContext | None:
        """What every connection to RabbitMQ passes as `ssl_context`: None for amqp://."""
        if not self.amqp_tls:
            return None
        return amqp_context(self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file)

    @property
    def dead_letter_retention_seconds(self) -> int:
        """0: dead letters without a sink are dropped (Knative's behaviour)."""
        return int(parse_duration(self.dead_letter_retention).total_seconds())

    @property
    def default_backoff(self) -> timedelta:
        return parse_duration(self.default_backoff_delay)

    @property
    def default_timeout_seconds(self) -> float | None:
        """RABBITMESH_DEFAULT_DELIVERY_TIMEOUT in seconds; None for no limit (PT0S)."""
        return parse_duration(self.default_delivery_timeout).total_seconds() or None


class SettingsError(Exception):
    """Raised with one readable line naming the environment variable that is wrong."""


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with explicit overrides (CLI flags) on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise SettingsError(describe_settings_error(e)) from None


def describe_settings_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        field = loc[0] if loc else ""
        name = f"RABBITMESH_{field.upper()}" if field else "settings"
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, (str, int, float)) else ""
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {msg}{shown}")
    return "invalid setting " + "; ".join(parts)
