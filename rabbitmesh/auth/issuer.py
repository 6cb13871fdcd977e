"""rabbitmesh as an OIDC issuer, for what it sends itself (sources, trigger and subscription
deliveries, dead letters), as Knative gives each of those an identity of its own.

- Issuer: `RABBITMESH_PUBLIC_URL` (the `iss` of its tokens).
- Key: `RABBITMESH_OIDC_SIGNING_KEY_FILE` (PEM, EC P-256 -> ES256 or RSA -> RS256), else an
  EC P-256 key generated once and kept in RabbitMQ (a durable one-message queue,
  `{prefix}.oidc-signing-key`), so every replica signs with the same key and a restart keeps
  it. Whoever may read that queue could sign tokens: it is as sensitive as the resource store
  (which holds the Secrets) already is.
- Served: `GET /.well-known/openid-configuration` and `GET /.well-known/jwks.json` (public
  keys only), so subscribers can check the tokens like any OIDC issuer's.
- Tokens: `sub` = the sender's identity (rabbitmesh/auth/identity.py), `aud` = the
  destination's audience, valid TOKEN_TTL; cached per (sub, aud) and renewed before expiry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rabbitmesh.amqp.client import AmqpClient, PublishFailed
from rabbitmesh.amqp.messages import raw_message

log = logging.getLogger("rabbitmesh.auth")

TOKEN_TTL = 3600
#: A cached token is renewed once less than this is left of it.
RENEW_BEFORE = 300
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class Issuer:
    def __init__(self, issuer: str, key: PrivateKey) -> None:
        self.issuer = issuer.rstrip("/")
        self.key = key
        self.alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        public = key.public_key()
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = hashlib.sha256(der).hexdigest()[:16]
        algo = jwt.get_algorithm_by_name(self.alg)
        jwk = json.loads(algo.to_jwk(public))
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        self.jwks: dict[str, Any] = {"keys": [jwk]}
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}

    def token(self, sub: str, aud: str) -> str:
        now = time.time()
        cached = self._cache.get((sub, aud))
        if cached is not None and cached[0] - now > RENEW_BEFORE:
            return cached[1]
        if len(self._cache) > 10_000:  # identities x audiences of one install: bounded
            self._cache.clear()
        exp = int(now) + TOKEN_TTL
        claims = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": int(now),
            "exp": exp,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self.key, algorithm=self.alg, headers={"kid": self.kid})
        self._cache[(sub, aud)] = (exp, token)
        return token

    def headers(self, sub: str, aud: str | None) -> dict[str, str] | None:
        """`Authorization` for a request to `aud` (none when the audience is unknown)."""
        if not aud:
            return None
        return {"Authorization": f"Bearer {self.token(sub, aud)}"}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + JWKS_PATH,
            "id_token_signing_alg_values_supported": [self.alg],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
        }


def load_key_file(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    raise ValueError(f"{path}: an EC P-256 or an RSA (2048 bits or more) private key is needed")


async def shared_key(publisher: AmqpClient, queue: str) -> PrivateKey:
    """The install's signing key, kept in RabbitMQ; made and stored by the first replica.

    The queue holds one message (`x-max-length: 1`, `x-overflow: reject-publish`): a second
    replica racing to store its own key is refused and reads the first one's instead.
    """
    assert publisher.connection is not None
    channel = await publisher.connection.channel()
    try:
        q = await channel.declare_queue(
            queue,
            durable=True,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )
        for _ in range(5):
            message = await q.get(no_ack=False, fail=False)
            if message is not None:
                await message.reject(requeue=True)  # a peek: it stays for everyone
                loaded = serialization.load_pem_private_key(message.body, password=None)
                assert isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
                return loaded
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                await publisher.publish("", queue, raw_message(pem, {}), mandatory=True)
                log.info("generated the OIDC signing key (kept in queue %s)", queue)
                return key
            except PublishFailed:
                continue  # another replica stored one first: read it
        raise RuntimeError(f"could not store or read the OIDC signing key in queue {queue}")
    finally:
        if not channel.is_closed:
            await channel.close()
