"""What the helper services share: an aiohttp app that takes CloudEvents on any path.

Knative's samples are Go functions built on the CloudEvents SDK; these answer the same way:
a reply event in binary mode (structured when it has no datacontenttype, since a binary
body would then get a Content-Type the event never had), an empty 200 for "no reply", 400
with `{"error": ...}` for a request that is not a CloudEvent, and 204 on `GET /healthz`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from rabbitmesh.cloudevents import (
    CloudEvent,
    InvalidEvent,
    decode_request,
    encode_binary,
    encode_structured,
)
from rabbitmesh.listen import cannot_listen

log = logging.getLogger("rabbitmesh.tools")

EventHandler = Callable[[list[CloudEvent]], Awaitable[web.StreamResponse]]

MAX_BODY = 16 * 1024 * 1024


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def reply(event: CloudEvent) -> web.Response:
    """200 with `event` as the reply."""
    if event.datacontenttype is None:
        headers, body = encode_structured(event)
    else:
        headers, body = encode_binary(event)
    return web.Response(status=200, headers=headers, body=body)


def no_reply() -> web.Response:
    return web.Response(status=200)


def build_app(on_events: EventHandler) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def receive(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response(
                {"error": f"method {request.method} not allowed"},
                status=405,
                headers={"Allow": "POST"},
            )
        body = await request.read()
        try:
            events = decode_request(request.headers, body)
        except InvalidEvent as e:
            return error(400, f"not a valid CloudEvent: {e}")
        return await on_events(events)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


def serve(app: web.Application, host: str, port: int, what: str) -> None:
    """Run until SIGINT/SIGTERM. Logs go to stderr: stdout is event-display's output."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )

    def started(_banner: str) -> None:  # run_app calls it once the port is bound
        log.info("%s listening on http://%s:%d", what, host, port)

    try:
        web.run_app(app, host=host, port=port, print=started, access_log=None, handle_signals=True)
    except OSError as e:
        change = "choose another with --port, or --host for another address"
        print(f"rabbitmesh: {what}: {cannot_listen(e, host, port, change)}", file=sys.stderr)
        sys.exit(1)
