"""The sender check at an ingress path, with `RABBITMESH_AUTHENTICATION_OIDC` on.

As Knative's `auth.Verifier`:
1. No EventPolicy applies to the target: the default authorization mode decides.
   `allow-all` takes every request (no token needed), `deny-all` refuses every one (403),
   `allow-same-namespace` needs a valid token whose `sub` is a service account of the
   target's namespace (`system:serviceaccount:{namespace}:...`).
2. Otherwise a valid token is needed (401 without, or with one that does not verify), and
   some applying policy must allow its `sub` (403 otherwise). Policies with `spec.filters`
   then decide per event, once the body is decoded: a request with an event no allowing
   policy's filters match is refused as a whole (403), nothing of it published.
The token's audience must be the target's `status.address.audience`. 401 answers carry
`WWW-Authenticate: Bearer` (RFC 6750) with the reason; tokens are never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from rabbitmesh.auth.identity import audience, namespace_of
from rabbitmesh.auth.policies import Compiled, PolicyIndex
from rabbitmesh.auth.verify import TokenError, Verifier
from rabbitmesh.http_input import bearer_token
from rabbitmesh.resources.base import Resource

REALM = 'Bearer realm="rabbitmesh"'
Mode = Literal["allow-all", "allow-same-namespace", "deny-all"]


@dataclass(frozen=True)
class Admission:
    """A sender let in: the policies whose filters each event must pass (None: no filter)."""

    sub: str | None
    policies: tuple[Compiled, ...] | None = None

    def refusal(self, attributes: Mapping[str, Any]) -> str | None:
        """Why this event may not be sent, None when it may."""
        if self.policies is None or any(p.allows_event(attributes) for p in self.policies):
            return None
        names = ", ".join(p.name for p in self.policies)
        return (
            f"event {attributes.get('id')!r} (type {attributes.get('type')!r}) matches the "
            f"filters of no EventPolicy that allows {self.sub!r} ({names})"
        )


ADMIT_ALL = Admission(None)


def target_audience(res: Resource) -> str:
    return audience(res.GROUP, res.KIND, res.namespace, res.name)


def _denied(status: int, why: str, challenge: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": challenge} if challenge else None
    return web.json_response({"error": why}, status=status, headers=headers)


class Gate:
    def __init__(self, verifier: Verifier, policies: PolicyIndex, mode: Mode) -> None:
        self.verifier = verifier
        self.policies = policies
        self.mode = mode

    async def admit(self, request: web.Request, target: Resource) -> Admission | web.Response:
        what = f"{target.KIND} {target.namespace}/{target.name}"
        applying = self.policies.for_target(target)
        if not applying:
            if self.mode == "allow-all":
                return ADMIT_ALL
            if self.mode == "deny-all":
                return _denied(
                    403,
                    f"no EventPolicy applies to {what} and the default authorization mode is "
                    "deny-all",
                )
        raw = bearer_token(request)
        if raw is None:
            return _denied(401, f"{what} needs Authorization: Bearer <OIDC token>", REALM)
        try:
            claims = await self.verifier.verify(raw.decode("ascii"), target_audience(target))
        except (TokenError, UnicodeDecodeError) as e:
            why = str(e) if isinstance(e, TokenError) else "not a JWT: not ASCII"
            return _denied(401, why, f'{REALM}, error="invalid_token"')
        sub = str(claims["sub"])
        if not applying:  # allow-same-namespace
            if namespace_of(sub) == target.namespace:
                return Admission(sub)
            return _denied(
                403,
                f"{sub!r} is not an identity of namespace {target.namespace!r}, no EventPolicy "
                f"applies to {what}, and the default authorization mode is allow-same-namespace",
            )
        allowing = tuple(p for p in applying if p.allows_subject(sub))
        if not allowing:
            names = ", ".join(p.name for p in applying)
            return _denied(403, f"no EventPolicy of {what} ({names}) allows {sub!r}")
        if any(p.filter is None for p in allowing):
            return Admission(sub)
        return Admission(sub, allowing)
