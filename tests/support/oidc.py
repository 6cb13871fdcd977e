"""A real OIDC issuer for tests: discovery document and JWKS over HTTP, tokens it signs."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec


class TestIssuer:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "test-key-1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.jwks_fetches = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        return {"keys": [jwk]}

    async def start(self) -> TestIssuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, _r: web.Request) -> web.Response:
        return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks"})

    async def _jwks(self, _r: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(self.jwks())

    def token(
        self,
        sub: str,
        aud: str,
        *,
        ttl: int = 600,
        iss: str | None = None,
        key: Any = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body = {"iss": iss or self.url, "sub": sub, "aud": aud, "iat": now, "exp": now + ttl}
        body.update(claims)
        return jwt.encode(
            body, key or self.key, algorithm="ES256", headers={"kid": kid or self.kid}
        )
