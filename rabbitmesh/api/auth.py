"""Who may change resources through the admin API.

Reading is open (Secret values are never shown). Changing needs:
- with RABBITMESH_ADMIN_TOKEN set: `Authorization: Bearer <token>`, compared in constant time
  (401 otherwise), from anywhere;
- without it: a request from the same host (a loopback address); others get 403, so an
  install reachable from a network is not open to changes by default.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from rabbitmesh.api.errors import ApiError

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_mutation(request: web.Request, token: str | None) -> None:
    if request.method not in MUTATIONS:
        return
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "this change needs Authorization: Bearer <RABBITMESH_ADMIN_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="rabbitmesh"'},
            )
        return
    if not is_loopback(request.remote):
        raise ApiError(
            403,
            "changes from other hosts are refused while RABBITMESH_ADMIN_TOKEN is not set; "
            "set it on the server and send Authorization: Bearer <token>",
        )
