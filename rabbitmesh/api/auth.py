"""Which requests may change resources through the admin API (docs/security.md).

Reading is open (Secret values are never shown). A change (POST, PUT, PATCH, DELETE) must
pass, in this order:

1. Not from a browser on another site (CSRF): a foreign `Origin` (one whose host is not the
   request's `Host` nor RABBITMESH_PUBLIC_URL's) or `Sec-Fetch-Site: cross-site|same-site`
   is 403, token or not. Other ports of localhost are other sites here: the admin API has no
   web pages, so no page elsewhere has business changing it.
2. Who: with RABBITMESH_ADMIN_TOKEN set, `Authorization: Bearer <token>` compared in
   constant time (401 otherwise), from anywhere. Without it, only loopback clients
   (403 otherwise), and only while RABBITMESH_ADMIN_TRUST_LOOPBACK is true (else every
   change is refused: there is no token to send). Trusting loopback also needs a loopback
   `Host` (localhost, 127.0.0.0/8, [::1]) or RABBITMESH_PUBLIC_URL's host, else 421: a web
   page whose DNS name was rebound to 127.0.0.1 reaches us from loopback, with its own name.
3. What: a body that is JSON or YAML by its Content-Type (415 otherwise). HTML forms and
   `fetch` without a CORS preflight can only send `text/plain`, form encodings or none, and
   rabbitmesh answers no preflight, so a browser cannot send a change cross-site at all.
   A DELETE without a body needs no Content-Type (a browser sends DELETE only after a
   preflight).
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web

from rabbitmesh.api.errors import ApiError
from rabbitmesh.http_input import bearer_token
from rabbitmesh.settings import Settings

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
#: What `Sec-Fetch-Site` a browser sends for a request made by a page of another origin.
FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})


@lru_cache(maxsize=1024)
def is_loopback(remote: str | None) -> bool:
    """Whether the peer address is a loopback one (cached: parsing it took a tenth of what a
    refused request costs, and peers are few)."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def body_format(content_type: str) -> str | None:
    """ "json" or "yaml" for a Content-Type the admin API reads (its media type, parameters
    ignored: aiohttp's `request.content_type`), None for any other."""
    ct = content_type.lower()
    if ct in JSON_TYPES or (ct.startswith("application/") and ct.endswith("+json")):
        return "json"
    if ct in YAML_TYPES or (ct.startswith("application/") and ct.endswith("+yaml")):
        return "yaml"
    return None


def host_name(authority: str) -> str:
    """`[::1]:8080` -> `::1`, `Example.com.:80` -> `example.com`."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    if authority.count(":") == 1:
        authority = authority.split(":", 1)[0]
    return authority.rstrip(".")


def is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_mutation(request: web.Request, settings: Settings) -> None:
    if request.method not in MUTATIONS:
        return
    check_browser(request, settings.public_url)
    token = settings.admin_token
    if token:
        given = bearer_token(request)
        if given is None or not hmac.compare_digest(given, token.encode()):
            raise ApiError(
                401,
                "this change needs Authorization: Bearer <RABBITMESH_ADMIN_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="rabbitmesh"'},
            )
    elif not settings.admin_trust_loopback:
        raise ApiError(
            403,
            "changes through the admin API are turned off: RABBITMESH_ADMIN_TRUST_LOOPBACK is "
            "false and RABBITMESH_ADMIN_TOKEN is not set; set the token on the server and send "
            "Authorization: Bearer <token>",
        )
    else:
        if not is_loopback(request.remote):
            raise ApiError(
                403,
                "changes from other hosts are refused while RABBITMESH_ADMIN_TOKEN is not set; "
                "set it on the server and send Authorization: Bearer <token>",
            )
        check_host(request, settings.public_url)
    check_content_type(request)


def check_browser(request: web.Request, public_url: str | None) -> None:
    """403 for a change a page of another site asked a browser to send."""
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in FOREIGN_FETCH_SITES:
        raise ApiError(
            403, f"changes from web pages of other sites are refused (Sec-Fetch-Site: {site})"
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser, or a same-origin GET-like request
    own = {request.headers.get("Host", "").strip().lower()}
    if public_url:
        own.add(urlsplit(public_url).netloc.lower())
    given = urlsplit(origin.strip()).netloc.lower() if "://" in origin else ""
    if not given or given not in own:
        raise ApiError(403, f"changes from web pages of other origins are refused ({origin!r})")


def check_host(request: web.Request, public_url: str | None) -> None:
    """421 unless the request names this server as loopback or by RABBITMESH_PUBLIC_URL."""
    host = host_name(request.headers.get("Host", ""))
    if is_loopback_name(host):
        return
    if public_url and host == (urlsplit(public_url).hostname or "").rstrip("."):
        return
    shown = host or "(none)"
    raise ApiError(
        421,
        f"Host {shown!r} is not this server's: without RABBITMESH_ADMIN_TOKEN changes must be "
        "addressed to localhost, 127.0.0.1, [::1] or RABBITMESH_PUBLIC_URL's host",
    )


def check_content_type(request: web.Request) -> None:
    if request.method == "DELETE" and not request.body_exists:
        return
    if body_format(request.content_type) is None:
        raise ApiError(
            415,
            f"Content-Type {request.content_type!r} is not accepted for changes: send "
            "application/json or application/yaml",
        )
