"""Checking a sender's bearer JWT: signed by a trusted issuer's key, for this audience, in date.

Trusted issuers: rabbitmesh itself (its keys in memory) and `RABBITMESH_OIDC_ISSUER`, whose
JWKS comes from its discovery document (`{issuer}/.well-known/openid-configuration` ->
`jwks_uri`) or from `RABBITMESH_OIDC_JWKS_FILE`. Fetched keys are cached (KEYS_TTL) and
fetched again early when a token names a key id not seen yet, at most every REFRESH_MIN_GAP,
so a flood of tokens with made-up `kid`s costs one fetch per gap, not one per request. Every
fetch has a deadline and a size limit.

What is refused (401, the reason in the answer): no token; a token that is not a JWT; an
algorithm outside ALGORITHMS (`none` and the HMAC ones included: an HMAC "signed" with a
public key is the classic confusion attack); an `iss` not trusted (compared exactly); no
key with the token's `kid`; a bad signature; a wrong `aud`; `exp` in the past or missing
(LEEWAY of clock skew); `nbf`/`iat` in the future; no `sub`. PyJWT does the cryptography.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jwt

log = logging.getLogger("rabbitmesh.auth")

#: Asymmetric algorithms only.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
#: Seconds of clock skew tolerated on exp/nbf/iat.
LEEWAY = 30
KEYS_TTL = 300.0
REFRESH_MIN_GAP = 30.0
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024


class TokenError(Exception):
    """The token does not prove anything: 401 with this message."""


class KeySource(Protocol):
    async def key(self, kid: str | None) -> jwt.PyJWK | None: ...


def _pick(keys: jwt.PyJWKSet | None, kid: str | None) -> jwt.PyJWK | None:
    if keys is None:
        return None
    for k in keys.keys:
        if kid is None or k.key_id == kid:
            return k
    return None


def _keyset(doc: Any, where: str) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(doc)
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where} is not a usable JWKS: {e}") from None


class StaticKeys:
    """Keys known in memory (rabbitmesh's own)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.keys = _keyset(jwks, "the key set")

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        return _pick(self.keys, kid)


class FileKeys:
    """A JWKS file, read again when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._keys: jwt.PyJWKSet | None = None

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._keys = _keyset(json.loads(self.path.read_bytes()), str(self.path))
                self._mtime = mtime
        except (OSError, ValueError) as e:
            log.warning("OIDC JWKS file %s unusable: %s", self.path, e)
        return _pick(self._keys, kid)


class DiscoveredKeys:
    """An issuer's keys through OIDC discovery, cached and refreshed."""

    def __init__(self, issuer: str, session: aiohttp.ClientSession) -> None:
        self.issuer = issuer.rstrip("/")
        self.session = session
        self._keys: jwt.PyJWKSet | None = None
        self._fetched = 0.0  # monotonic time of the last successful fetch
        self._tried = -REFRESH_MIN_GAP  # ... and of the last attempt
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    def _refreshed(self, _task: asyncio.Task[None]) -> None:
        self._background = None

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        if self._keys is None:
            await self._refresh()
        elif now - self._fetched > KEYS_TTL and self._background is None:
            # Stale: verify with the keys at hand, refresh beside the request (an issuer
            # that is slow or down must not hold every request for the fetch's deadline).
            self._background = asyncio.create_task(self._refresh())
            self._background.add_done_callback(self._refreshed)
        found = _pick(self._keys, kid)
        if found is None and time.monotonic() - self._tried >= REFRESH_MIN_GAP:
            await self._refresh()  # the issuer may have rotated its keys
            found = _pick(self._keys, kid)
        return found

    async def _refresh(self) -> None:
        async with self._lock:  # one fetch at a time; the others use its result
            if time.monotonic() - self._tried < 1.0:
                return
            self._tried = time.monotonic()
            try:
                discovery = await self._get(f"{self.issuer}/.well-known/openid-configuration")
                if discovery.get("issuer", "").rstrip("/") != self.issuer:
                    raise ValueError("its discovery document names another issuer")
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https:", "http:")):
                    raise ValueError("its discovery document has no jwks_uri")
                self._keys = _keyset(await self._get(jwks_uri), jwks_uri)
                self._fetched = time.monotonic()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                # The keys fetched before stay in use until a fetch works again.
                log.warning("OIDC issuer %s: keys not fetched: %s", self.issuer, e)

    async def _get(self, url: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with self.session.get(url, timeout=timeout, allow_redirects=False) as r:
            if r.status != 200:
                raise ValueError(f"GET {url}: HTTP {r.status}")
            body = await r.content.read(MAX_DOCUMENT_BYTES + 1)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes")
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError(f"GET {url}: not a JSON object")
            return doc


class Verifier:
    def __init__(self, issuers: dict[str, KeySource]) -> None:
        self.issuers = {iss.rstrip("/"): src for iss, src in issuers.items()}

    def trust(self, issuer: str, keys: KeySource) -> None:
        self.issuers[issuer.rstrip("/")] = keys

    async def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The token's claims; TokenError saying why it proves nothing."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise TokenError(f"not a JWT: {e}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenError(f"algorithm {alg!r} is not accepted (one of {', '.join(ALGORITHMS)})")
        iss = unverified.get("iss")
        source = self.issuers.get(iss.rstrip("/")) if isinstance(iss, str) else None
        if source is None:
            raise TokenError(f"issuer {iss!r} is not trusted")
        kid = header.get("kid")
        key = await source.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise TokenError(f"issuer {iss!r} has no key {kid!r}")
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", "sub"], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"the token is not for this target (audience {audience!r})") from None
        except jwt.PyJWTError as e:
            raise TokenError(f"invalid token: {e}") from None
