"""The dead-letter subresource of Triggers and Subscriptions (docs/delivery.md):

    GET  /apis/{group}/{version}/namespaces/{ns}/{triggers|subscriptions}/{name}/deadletters
    POST .../deadletters/redrive    {"ids": ["id", ...]} or {"all": true}
    POST .../deadletters/purge      same body

Listing reads the dead-letter store (a stream) and changes nothing; redrive puts the events
back into the trigger's (subscription's) queue with a fresh retry budget; purge forgets them.
The POSTs are changes: the admin API's token and cross-site rules apply (api/auth.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from rabbitmesh.amqp.client import PublishFailed
from rabbitmesh.api.errors import ApiError
from rabbitmesh.api.objects import resolve_kind
from rabbitmesh.controlplane import ControlPlane
from rabbitmesh.dispatch.deadletter_store import list_dead_letters, purge, redrive
from rabbitmesh.http_input import BodyError, read_body

#: A redrive or purge body: ids are event ids, so this is plenty.
MAX_BODY = 1024 * 1024
MAX_IDS = 10_000


def queue_of(plane: ControlPlane, request: web.Request) -> str:
    """The delivery queue of the Trigger or Subscription the path names; 404 otherwise."""
    m = request.match_info
    info = resolve_kind(m["group"], m["version"], m["plural"])
    ns, name = m["namespace"], m["name"]
    if info.kind not in ("Trigger", "Subscription"):
        raise ApiError(404, f"{info.plural} have no dead letters (only triggers, subscriptions)")
    if plane.ctx.get(info.kind, ns, name) is None:
        raise ApiError(404, f"{info.kind} {ns}/{name} not found")
    names = plane.ctx.names
    if info.kind == "Trigger":
        return names.trigger_queue(ns, name)
    return names.subscription_queue(ns, name)


async def selection(request: web.Request, timeout: float) -> list[str] | None:
    """The ids a redrive or purge names; None for {"all": true}. 400/413/422 otherwise."""
    try:
        raw = await read_body(request, MAX_BODY, timeout, limit_name="dead-letter request body")
    except BodyError as e:
        raise ApiError(e.status, e.message) from None
    try:
        body: Any = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"body: not JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(422, 'body: must be an object, {"ids": [...]} or {"all": true}')
    unknown = set(body) - {"ids", "all"}
    if unknown:
        raise ApiError(422, f"body.{sorted(unknown)[0]}: unknown field")
    ids, everything = body.get("ids"), body.get("all")
    if everything is not None and not isinstance(everything, bool):
        raise ApiError(422, "body.all: must be true or false")
    if bool(everything) == (ids is not None):
        raise ApiError(422, 'body.ids: give either "ids" or "all": true')
    if everything:
        return None
    if (
        not isinstance(ids, list)
        or not ids
        or len(ids) > MAX_IDS
        or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids)
    ):
        raise ApiError(
            422, f"body.ids: must be a list of 1 to {MAX_IDS} event ids (strings up to 255)"
        )
    return list(ids)


class DeadLetterApi:
    def __init__(self, api: Any) -> None:
        self.api = api  # the AdminApi: its plane, settings and wrapper
        # One store read at a time per process: a listing is an open GET, and each read
        # holds up to deadletter_store.READ_PREFETCH events in memory.
        self._reads = asyncio.Semaphore(1)

    def routes(self) -> list[web.RouteDef]:
        base = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/deadletters"
        return [
            web.get(base, self.api._wrap(self.list)),
            web.post(base + "/{action}", self.api._wrap(self.act)),
        ]

    async def list(self, request: web.Request) -> web.StreamResponse:
        plane = self.api.plane
        queue = queue_of(plane, request)
        store = plane.ctx.names.dead_letter_store(queue)
        try:
            async with self._reads:
                entries = await list_dead_letters(plane.publisher, store)
        except Exception as e:  # RabbitMQ went away mid-read
            raise ApiError(503, f"dead-letter store {store} cannot be read now: {e}") from None
        return web.json_response({"items": [e.summary() for e in entries]})

    async def act(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ("redrive", "purge"):
            raise ApiError(404, f"unknown dead-letter action {action!r} (redrive, purge)")
        plane = self.api.plane
        queue = queue_of(plane, request)
        ids = await selection(request, self.api.settings.request_timeout)
        store = plane.ctx.names.dead_letter_store(queue)
        try:
            async with self._reads:
                if action == "redrive":
                    to = plane.ctx.cluster_of_queue(queue).publisher  # its broker's RabbitMQ
                    done = await redrive(plane.publisher, store, queue, ids, to)
                else:
                    done = await purge(plane.publisher, store, ids)
        except PublishFailed as e:
            raise ApiError(503, f"RabbitMQ did not take the {action}: {e}") from None
        return web.json_response({action: done, "count": len(done)})
