"""TLS contexts: the HTTP server's certificate (RABBITMESH_TLS_*) and the client side of an
`amqps://` connection to RabbitMQ (RABBITMESH_AMQP_CA_FILE, optional client certificate).

Both are built with the `ssl` module's secure defaults (TLS 1.2 or newer; for RabbitMQ, the
server certificate and host name are verified, against the given CA or the system's).
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be loaded; names the setting."""


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The HTTP server's context: its certificate chain and private key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(
            f"RABBITMESH_TLS_CERT_FILE / RABBITMESH_TLS_KEY_FILE: cannot load "
            f"{cert_file} with {key_file}: {e}"
        ) from None
    return ctx


def amqp_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """The context of an amqps:// connection: RabbitMQ's certificate is checked against
    `ca_file` (the system's CAs when None), and a client certificate is offered when given
    (RabbitMQ's `ssl_options.verify = verify_peer` / EXTERNAL authentication)."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"RABBITMESH_AMQP_CA_FILE: cannot load {ca_file}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(
                f"RABBITMESH_AMQP_CERT_FILE / RABBITMESH_AMQP_KEY_FILE: cannot load "
                f"{cert_file} with {key_file}: {e}"
            ) from None
    return ctx
