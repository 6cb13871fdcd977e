"""GitLabSource: GitLab webhooks in, CloudEvents out, as knative-extensions/eventing-gitlab.

Receiving (every replica that serves HTTP): `POST /sources/gitlab/{namespace}/{name}`.
- `X-Gitlab-Token` must equal the `secretToken` Secret's value (compared in constant time, as
  bytes): 401 otherwise. A `secretToken` that cannot be read — its Secret or key missing
  (optional or not), or its value empty — fails closed, as ingress tokens do: the source is not
  Ready (`SecretTokenMissing`/`SecretNotFound`) and every webhook gets 401. A source without
  `secretToken` accepts any request, as eventing-gitlab does.
- `X-Gitlab-Event: Push Hook` becomes type `dev.knative.sources.gitlab.push` (the header
  without " Hook", snake_case: `tag_push`, `issue`, `confidential_issue`, `merge_request`,
  `note`, `confidential_note`, `job`, `pipeline`, `wiki_page`, `deployment`); an unknown or
  missing header is 400. Source: `spec.projectUrl`. Extension `comgitlabevent`: the header.
  Data: the payload as GitLab sent it (application/json; a body that is not JSON is 400).
- The answer waits for the sink: 202 once it took the event (retried briefly), 502 if it did
  not (GitLab shows the failure, and its "resend" retries it), 503 while the source is not
  ready, 404 for an unknown source. The body is read as ingress reads one
  (rabbitmesh/http_input.py): 413 past RABBITMESH_MAX_EVENT_BYTES, 408 when slower than
  RABBITMESH_REQUEST_TIMEOUT.

Registering (the replica holding the source's lease): with `accessToken`, the project hook is
created or updated through GitLab's REST API (`/api/v4/projects/{url-encoded path}/hooks`,
header `PRIVATE-TOKEN`) for `{RABBITMESH_PUBLIC_URL}/sources/gitlab/{namespace}/{name}`, with
the `eventTypes` flags on and the others off, `token` = the secret token, and
`enable_ssl_verification` = `sslverify`. A hook with that URL is updated rather than added
again. When the source is deleted, its hooks are removed. `sslverify: false` also turns off
rabbitmesh's own TLS verification of the GitLab API (a self-signed GitLab).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from aiohttp import web

from rabbitmesh.http_input import BodyError, header_bytes, read_body
from rabbitmesh.resources.sources import GITLAB_EVENTS, GITLAB_TYPE_PREFIX, GitLabSource
from rabbitmesh.sources.manager import Plan, Runtime
from rabbitmesh.sources.secrets import NotReady, ResourceLookup, secret_value, secrets_in
from rabbitmesh.sources.sender import Retry, deliver, new_event

log = logging.getLogger("rabbitmesh.sources")

EVENT_HEADER = "X-Gitlab-Event"
TOKEN_HEADER = "X-Gitlab-Token"
EVENT_EXTENSION = "comgitlabevent"
PATH = "/sources/gitlab/{namespace}/{name}"

#: GitLab gives a webhook 10 s: the sink gets a few quick tries within that.
WEBHOOK_RETRY = Retry(retries=3, backoff=0.1, max_backoff=1.0, timeout=2.5)
#: GitLab API calls.
API_TIMEOUT = aiohttp.ClientTimeout(total=30)

KINDS = frozenset(GITLAB_EVENTS.values())
#: The webhook's body is bounded like an event posted to ingress.
BODY_LIMIT = "RABBITMESH_MAX_EVENT_BYTES"


def event_kind(header: str) -> str | None:
    """`Merge Request Hook` -> `merge_request`; None for a header we do not know."""
    if not header.endswith(" Hook"):
        return None
    kind = header[: -len(" Hook")].strip().lower().replace(" ", "_")
    return kind if kind in KINDS else None


def split_project_url(url: str) -> tuple[str, str]:
    """(GitLab base URL, project path): https://gitlab.com/group/app -> (https://gitlab.com,
    group/app)."""
    parts = urlsplit(url.rstrip("/"))
    project = parts.path.strip("/").removesuffix(".git")
    return f"{parts.scheme}://{parts.netloc}", project


def hook_url(base_url: str, namespace: str, name: str) -> str:
    return base_url.rstrip("/") + PATH.format(namespace=namespace, name=name)


def tokens(source: GitLabSource, lookup: ResourceLookup) -> tuple[str | None, str | None]:
    """(access token, secret token); NotReady when a referenced Secret or key is missing, or
    the secret token cannot authenticate anyone (see `webhook_token`)."""
    access = None
    ref = source.spec.access_token
    if ref is not None:
        sel = ref.secret_key_ref
        access = secret_value(
            secrets_in(lookup), source.namespace, sel.name, sel.key, optional=bool(sel.optional)
        )
    return access, webhook_token(source, lookup)


def webhook_token(source: GitLabSource, lookup: ResourceLookup) -> str | None:
    """The token webhooks must carry; None when the source has no `secretToken` (it accepts
    any request). A `secretToken` that names a missing Secret or key — even an optional one —
    or an empty value is NotReady: fail closed, never open."""
    ref = source.spec.secret_token
    if ref is None:
        return None
    sel = ref.secret_key_ref
    value = secret_value(secrets_in(lookup), source.namespace, sel.name, sel.key, optional=True)
    if value is None:
        if not sel.optional:  # the usual SecretNotFound message
            secret_value(secrets_in(lookup), source.namespace, sel.name, sel.key)
        raise NotReady(
            "SecretTokenMissing",
            f"secretToken: Secret {sel.name!r} or its key {sel.key!r} is missing (namespace "
            f"{source.namespace!r}); webhooks are refused until it exists",
        )
    if not value.strip():
        raise NotReady(
            "SecretTokenMissing",
            f"secretToken: key {sel.key!r} of Secret {sel.name!r} is empty; webhooks are "
            "refused until it holds a token",
        )
    return value


# --- receiving ----------------------------------------------------------------------------


class GitLabWebhooks:
    """The webhook endpoint. `lookup` reads reconciled resources; `session` is the shared
    HTTP client (both exist only once rabbitmesh is connected)."""

    def __init__(
        self,
        lookup: Callable[[], ResourceLookup | None],
        session: Callable[[], aiohttp.ClientSession | None],
        *,
        max_body_bytes: int,
        request_timeout: float,
        auth: Callable[[GitLabSource], Callable[[], dict[str, str] | None] | None] = (
            lambda _source: None
        ),
    ) -> None:
        self.lookup = lookup
        self.session = session
        #: The source's own identity for its sink (authentication-oidc), else None.
        self.auth = auth
        self.max_body_bytes = max_body_bytes  # RABBITMESH_MAX_EVENT_BYTES, as ingress
        self.request_timeout = request_timeout

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        lookup, session = self.lookup(), self.session()
        if lookup is None or session is None:
            return _error(503, "starting up", retry=True)
        source = lookup("GitLabSource", ns, name)
        if not isinstance(source, GitLabSource):
            return _error(404, f"no GitLabSource {name!r} in namespace {ns!r}")
        sink = (source.status.model_extra or {}).get("sinkUri")
        try:
            secret = webhook_token(source, lookup)
        except NotReady as e:  # fail closed: no usable token, nobody is authenticated
            log.warning("GitLabSource %s/%s: webhook refused: %s", ns, name, e.message)
            return _error(401, f"GitLabSource {ns}/{name} cannot authenticate webhooks yet")
        if secret is not None:
            given = header_bytes(request, TOKEN_HEADER)  # bytes: non-UTF-8 is a 401, not a 500
            if not hmac.compare_digest(given, secret.encode()):
                log.warning("GitLabSource %s/%s: webhook with a wrong %s", ns, name, TOKEN_HEADER)
                return _error(401, f"missing or wrong {TOKEN_HEADER}")
        header = request.headers.get(EVENT_HEADER, "")
        kind = event_kind(header)
        if kind is None:
            return _error(400, f"unknown or missing {EVENT_HEADER}: {header!r}")
        try:
            body = await read_body(
                request, self.max_body_bytes, self.request_timeout, limit_name=BODY_LIMIT
            )
        except BodyError as e:
            return _error(e.status, e.message)
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "the payload is not JSON")
        if not sink:
            return _error(503, f"GitLabSource {ns}/{name} has no resolved sink", retry=True)
        event = new_event(
            GITLAB_TYPE_PREFIX + kind,
            source.spec.project_url,
            data=body,
            datacontenttype="application/json",
            extensions={EVENT_EXTENSION: header, **source.extensions},
        )
        outcome = await deliver(
            session,
            sink,
            event,
            namespace=ns,
            what=f"GitLabSource {ns}/{name}",
            retry=WEBHOOK_RETRY,
            auth=self.auth(source),
        )
        if not outcome.ok:
            return _error(502, f"the sink did not take the event: {outcome.error}")
        return web.json_response({"id": event.id, "type": event.type}, status=202)


def _error(status: int, message: str, retry: bool = False) -> web.Response:
    headers = {"Retry-After": "5"} if retry else None
    return web.json_response({"error": message}, status=status, headers=headers)


# --- registering --------------------------------------------------------------------------


class GitLabApiError(Exception):
    pass


class GitLabApi:
    """The project-hook part of GitLab's REST API v4."""

    def __init__(
        self, session: aiohttp.ClientSession, project_url: str, token: str, verify: bool
    ) -> None:
        self.session = session
        base, project = split_project_url(project_url)
        self.hooks = f"{base}/api/v4/projects/{quote(project, safe='')}/hooks"
        self.headers = {"PRIVATE-TOKEN": token, "Accept": "application/json"}
        self.ssl = verify  # aiohttp: True = the default verification

    async def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self.session.request(
                method, url, json=body, headers=self.headers, ssl=self.ssl, timeout=API_TIMEOUT
            ) as resp:
                raw = await resp.read()
                if method == "DELETE" and resp.status == 404:
                    return None  # already gone
                if not 200 <= resp.status < 300:
                    text = raw[:300].decode(errors="replace")
                    raise GitLabApiError(f"{method} {url}: HTTP {resp.status} {text}")
                return orjson.loads(raw) if raw.strip() else None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as e:
            raise GitLabApiError(f"{method} {url}: {type(e).__name__}: {e}") from None

    async def find(self, url: str) -> list[dict[str, Any]]:
        hooks = await self._call("GET", self.hooks)
        return [h for h in hooks or [] if isinstance(h, dict) and h.get("url") == url]

    async def register(self, body: dict[str, Any]) -> int:
        """Update the hook with this URL, or add one; the hook's id."""
        existing = await self.find(body["url"])
        if existing:
            hook_id = int(existing[0]["id"])
            await self._call("PUT", f"{self.hooks}/{hook_id}", body)
            return hook_id
        created = await self._call("POST", self.hooks, body)
        return int(created["id"])

    async def unregister(self, url: str) -> list[int]:
        gone = []
        for hook in await self.find(url):
            await self._call("DELETE", f"{self.hooks}/{int(hook['id'])}")
            gone.append(int(hook["id"]))
        return gone


def hook_body(url: str, event_types: list[str], secret: str | None, verify: bool) -> dict[str, Any]:
    """The hook: every event flag explicit (on for eventTypes, off otherwise)."""
    body: dict[str, Any] = {"url": url, "enable_ssl_verification": verify}
    for flag in GITLAB_EVENTS:
        body[flag] = flag in event_types
    if secret is not None:
        body["token"] = secret
    return body


def plan(source: GitLabSource, base_url: str, access: str, secret: str | None) -> Plan:
    url = hook_url(base_url, source.namespace, source.name)
    verify = source.spec.sslverify is not False
    body = hook_body(url, source.spec.event_types, secret, verify)
    what = f"GitLabSource {source.namespace}/{source.name}"

    def api(rt: Runtime) -> GitLabApi:
        return GitLabApi(rt.session, source.spec.project_url, access, verify)

    async def register(rt: Runtime) -> None:
        delay = 1.0
        while True:
            try:
                hook_id = await api(rt).register(body)
                break
            except GitLabApiError as e:
                rt.report(("WebhookNotConfigured", str(e)))
                log.warning("%s: registering the project hook failed: %s", what, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        log.info("%s: project hook %d -> %s", what, hook_id, url)
        rt.status["webhookID"] = hook_id
        rt.report(None)
        rt.changed()

    async def unregister(rt: Runtime) -> None:
        for hook_id in await api(rt).unregister(url):
            log.info("%s: project hook %d removed", what, hook_id)

    return Plan(
        key=source.key,
        what=what,
        fingerprint=(source.spec.dump(), body, access, base_url),
        work=register,
        on_delete=unregister,
    )
