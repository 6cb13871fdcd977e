"""Optional per-broker ingress authentication: a bearer token kept in a Secret.

Knative's EventPolicy says which senders a Broker accepts (OIDC identities on Kubernetes).
rabbitmesh has no identity provider, so it keeps the idea in its simplest form: a Broker
annotated

    metadata:
      annotations:
        rabbitmesh.dev/ingress-token-secret: ingress-tokens        # key `token`
        # or  ingress-tokens/producer-a                            # key `producer-a`

accepts a POST only with `Authorization: Bearer <token>`, where <token> is a line of that
Secret key (several lines = several valid tokens, so a token can be rotated without
downtime). Anything else gets 401 with `WWW-Authenticate: Bearer`. Tokens are compared in
constant time and never logged. The Secret lives in the same namespace as the Broker; while
it or its key is missing the Broker is not Ready and its ingress accepts nothing (fail
closed). Replies and events published straight to the broker's exchange (AMQP) are not
HTTP and not affected. A JobSink takes the same annotation for its own ingress (each event
there starts a run), and a RequestReply takes only what its Broker's ingress would.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web

from rabbitmesh.http_input import bearer_token
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.core import Secret
from rabbitmesh.resources.eventing import INGRESS_TOKEN_ANNOTATION, ingress_token_secret

REALM = 'Bearer realm="rabbitmesh"'

Lookup = Callable[[str, str, str], Resource | None]


def tokens(get: Lookup, broker: Resource) -> tuple[bytes, ...] | None:
    """The tokens the broker's ingress accepts: None when it needs none, empty when it needs
    one but its Secret or key is missing (then nothing is accepted)."""
    try:
        ref = ingress_token_secret(broker)
    except FieldError:
        return ()
    if ref is None:
        return None
    secret = get("Secret", broker.namespace, ref[0])
    value = secret.value(ref[1]) if isinstance(secret, Secret) else None
    if value is None:
        return ()
    return tuple(line.strip().encode() for line in value.splitlines() if line.strip())


def problem(get: Lookup, broker: Resource) -> str | None:
    """Why the broker's ingress cannot authenticate anyone (for its status), else None."""
    ref = ingress_token_secret(broker)
    if ref is None or tokens(get, broker):
        return None
    return (
        f"Secret {broker.namespace}/{ref[0]} (key {ref[1]!r}) named by annotation "
        f"{INGRESS_TOKEN_ANNOTATION} does not exist or holds no token; the ingress accepts "
        "nothing until it does"
    )


def unauthorized(request: web.Request, accepted: tuple[bytes, ...]) -> web.Response | None:
    """None when the request carries one of the `accepted` tokens, else the 401 to send."""
    candidate = bearer_token(request)
    if candidate is not None:
        ok = False
        for token in accepted:  # every one, so the time does not tell which matched
            ok |= hmac.compare_digest(candidate, token)
        if ok:
            return None
        challenge, why = f'{REALM}, error="invalid_token"', "the bearer token is not valid"
    else:
        challenge, why = REALM, "this ingress needs Authorization: Bearer <token>"
    return web.json_response({"error": why}, status=401, headers={"WWW-Authenticate": challenge})
