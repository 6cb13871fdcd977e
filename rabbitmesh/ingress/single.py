"""What the hosted kinds that take one event per request share (EventTransform, RequestReply):
finding their resource, and reading one CloudEvent within the ingress' limits.

Answers are the ingress' own: 503 while resources load or the resource is not Ready, 404 for
none, 413/408 for bodies over the limits, 400 for what is not one valid CloudEvent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from rabbitmesh.cloudevents import CloudEvent, InvalidEvent, OverLimit, decode_request
from rabbitmesh.http_input import BodyError, read_body
from rabbitmesh.ingress.handlers import ALLOW, error
from rabbitmesh.resources.base import Resource
from rabbitmesh.settings import Settings

if TYPE_CHECKING:
    from rabbitmesh.auth.gate import Admission, Gate


class Refused(Exception):
    """The request is answered with `response` (an error, or OPTIONS' answer)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


#: (kind, namespace, name) -> the reconciled resource, or None.
Lookup = Callable[[str, str, str], Resource | None]
#: The reconciled resources, or None while they are not loaded yet (503 meanwhile).
Resources = Callable[[], Lookup | None]
#: The sender check (rabbitmesh/auth/gate.py) while authentication-oidc is on, else None.
Gates = Callable[[], "Gate | None"]


async def admitted(gate: Gate | None, request: web.Request, res: Resource) -> Admission | None:
    """The sender check of the Broker/Channel ingress, for a hosted endpoint: None without
    authentication-oidc, else who was let in; Refused (401/403) otherwise. Before the body
    is read."""
    if gate is None:
        return None
    decided = await gate.admit(request, res)
    if isinstance(decided, web.Response):
        raise Refused(decided)
    return decided


def check_event(admission: Admission | None, event: CloudEvent) -> None:
    """Refused (403) when the policies that let the sender in do not take this event
    (their `spec.filters`)."""
    if admission is None:
        return
    refused = admission.refusal(event.attributes)
    if refused is not None:
        raise Refused(error(403, refused))


def not_ready_message(res: Resource) -> str:
    """Why `res` takes no events: "... exists but is not Ready (reason: message)"."""
    ready = next((c for c in res.status.conditions if c.type == "Ready"), None)
    why = "not reconciled yet"
    if ready is not None and (ready.reason or ready.message):
        why = ": ".join(part for part in (ready.reason, ready.message) if part)
    return f"{res.KIND} {res.namespace}/{res.name} exists but is not Ready ({why})"


def ready_resource(get: Lookup | None, kind: str, request: web.Request) -> Resource:
    """The Ready resource a hosted path names; Refused otherwise (405/503/404)."""
    if request.method == "OPTIONS":
        raise Refused(web.Response(status=200, headers={"Allow": ALLOW}))
    if request.method != "POST":
        raise Refused(error(405, f"method {request.method} not allowed", Allow=ALLOW))
    ns, name = request.match_info["namespace"], request.match_info["name"]
    retry = {"Retry-After": "2"}
    if get is None:
        raise Refused(error(503, "starting up: resources not loaded yet", **retry))
    res = get(kind, ns, name)
    if res is None:
        raise Refused(error(404, f"{kind} {ns}/{name} not found"))
    if res.status.ready != "True":
        raise Refused(error(503, not_ready_message(res), **retry))
    return res


async def read_one_event(request: web.Request, settings: Settings) -> CloudEvent:
    """The request's single CloudEvent (binary or structured mode); Refused otherwise."""
    try:
        body = await read_body(
            request,
            settings.max_event_bytes,
            settings.request_timeout,
            limit_name="RABBITMESH_MAX_EVENT_BYTES",
        )
    except BodyError as e:
        raise Refused(error(e.status, e.message)) from None
    try:
        events = decode_request(
            request.headers, body, max_events=1, max_depth=settings.max_json_depth
        )
    except OverLimit as e:
        raise Refused(error(413, str(e))) from None
    except InvalidEvent as e:
        raise Refused(error(400, str(e))) from None
    if len(events) != 1:
        raise Refused(error(400, "send one event, not a batch (unsupported batch input)"))
    return events[0]


Handler = Callable[[web.Request], object]
