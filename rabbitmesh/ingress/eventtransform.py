"""The EventTransform endpoint, `/eventtransforms/{namespace}/{name}`, as Knative's JSONata
transform service answers (docs/eventtransform.md):

- no `spec.sink`: the transformed event is the response (200, structured JSON format), so a
  Trigger's subscriber reply brings it back into the broker;
- `spec.sink`: the transformed event is POSTed there; the sink's response is passed back as
  it came, transformed by `spec.reply.jsonata`, or dropped (`spec.reply.discard`: its status
  alone);
- the expression fails, or makes no valid CloudEvent: 422 naming why; the sender (a
  Trigger's dispatcher) retries it as its delivery says and dead-letters it after that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from rabbitmesh.cloudevents import (
    CloudEvent,
    InvalidEvent,
    decode_response,
    encode_binary,
    encode_structured,
)
from rabbitmesh.cloudevents.jsonformat import dumps, loads
from rabbitmesh.ingress.handlers import error
from rabbitmesh.ingress.single import (
    Gates,
    Refused,
    Resources,
    admitted,
    check_event,
    read_one_event,
    ready_resource,
)
from rabbitmesh.metrics import transforms_total
from rabbitmesh.resources.eventing_v1alpha1 import EventTransform
from rabbitmesh.settings import Settings
from rabbitmesh.transform.jsonata import TransformError, evaluate, transform_event

log = logging.getLogger("rabbitmesh.eventtransform")

KIND = "EventTransform"
PATH = "/eventtransforms/{namespace}/{name}"


class EventTransforms:
    def __init__(
        self,
        settings: Settings,
        resources: Resources,
        session: Callable[[], aiohttp.ClientSession | None],
        gate: Gates = lambda: None,
        auth: Callable[[EventTransform], Callable[[], dict[str, str] | None] | None] = (
            lambda _res: None
        ),
    ) -> None:
        #: The EventTransform's own identity for its sink (authentication-oidc), else None.
        self.auth = auth
        self.settings = settings
        self.resources = resources
        self.session = session
        self.gate = gate

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            res = ready_resource(self.resources(), KIND, request)
            assert isinstance(res, EventTransform)
            # The ingress' sender check (EventPolicy, authentication-oidc), before the body.
            admission = await admitted(self.gate(), request, res)
            event = await read_one_event(request, self.settings)
            check_event(admission, event)
        except Refused as r:
            return r.response
        timeout_ms = self.settings.jsonata_timeout_ms
        try:
            out = transform_event(res.spec.jsonata.expression, event, timeout_ms)  # type: ignore[union-attr]
        except TransformError as e:
            transforms_total.labels(res.namespace, res.name, "failed").inc()
            return error(422, f"{KIND} {res.namespace}/{res.name}: {e}")
        transforms_total.labels(res.namespace, res.name, "ok").inc()
        sink = (res.status.model_extra or {}).get("sinkUri")
        if sink is None:
            return structured(200, out)
        return await self._forward(res, out, sink)

    async def _forward(
        self, res: EventTransform, event: CloudEvent, sink: str
    ) -> web.StreamResponse:
        session = self.session()
        if session is None:
            return error(503, "starting up", **{"Retry-After": "2"})
        headers, body = encode_binary(event)
        headers["Kn-Namespace"] = res.namespace
        auth = self.auth(res)
        if auth is not None and (token := auth()) is not None:
            headers.update(token)
        timeout = self.settings.request_timeout
        try:
            async with session.post(
                sink,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,  # as Knative's transform: redirect is an error
                skip_auto_headers=("Content-Type",),
            ) as resp:
                status, rheaders, rbody = resp.status, resp.headers, await resp.read()
        except TimeoutError:
            return error(504, f"sink {sink}: no response within {timeout:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return error(502, f"sink {sink}: {type(e).__name__}: {e}")
        if res.discard_reply:
            return web.Response(status=status)
        expression = res.reply_expression
        if expression is None or not 200 <= status < 300:
            # Passed back as it came (Knative pipes the sink's response through).
            keep = {
                k: v
                for k, v in rheaders.items()
                if k.lower() in _PASSED or k.lower().startswith("ce-")
            }
            return web.Response(status=status, body=rbody, headers=keep)
        # As Knative's: the response as a CloudEvent when it is one, else its JSON, else text.
        try:
            reply = decode_response(status, rheaders, rbody)
        except InvalidEvent:
            reply = None
        timeout_ms = self.settings.jsonata_timeout_ms
        try:
            if reply is not None:
                return structured(status, transform_event(expression, reply, timeout_ms))
            value: Any
            try:
                value = loads(rbody) if rbody else None
            except InvalidEvent:
                value = rbody.decode(errors="replace")
            result = evaluate(expression, value, timeout_ms)
        except TransformError as e:
            return error(502, f"{KIND} {res.namespace}/{res.name}: reply: {e}")
        return web.Response(status=status, body=dumps(result), content_type="application/json")


#: Response headers passed back from the sink besides its ce- ones.
_PASSED = frozenset({"content-type", "retry-after"})


def structured(status: int, event: CloudEvent) -> web.Response:
    """`event` in the structured JSON format, as Knative's transform answers."""
    headers, body = encode_structured(event)
    if event.trace:
        headers.update(event.trace)
    return web.Response(status=status, body=body, headers=headers)
