"""`rabbitmesh appender --message M`: append M to `data.message` and reply with the event.

As Knative's appender sample: the reply keeps every attribute of the event it answers (id
included) with `datacontenttype: application/json`, and `--type` (env TYPE) replaces the
type. Unlike the sample it keeps the other fields of the data too. Data that is not a JSON
object gets 400 with the reason.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from rabbitmesh.cloudevents import CloudEvent, is_json_content_type
from rabbitmesh.tools.service import build_app, error, reply

log = logging.getLogger("rabbitmesh.appender")


class NotAppendable(ValueError):
    """The event's data is not a JSON object with a string `message` (or none)."""


def append(event: CloudEvent, message: str, type_: str | None = None) -> CloudEvent:
    ct = event.datacontenttype
    if ct is not None and not is_json_content_type(ct):
        raise NotAppendable(f"data must be JSON, got datacontenttype {ct!r}")
    try:
        payload = orjson.loads(event.data) if event.data else {}
    except orjson.JSONDecodeError as e:
        raise NotAppendable(f"data is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise NotAppendable(f"data must be a JSON object, got {type(payload).__name__}")
    current = payload.get("message")
    if current is None:
        current = ""
    if not isinstance(current, str):
        raise NotAppendable(f"data.message must be a string, got {type(current).__name__}")
    payload["message"] = current + message
    attributes = dict(event.attributes)
    attributes["datacontenttype"] = "application/json"
    if type_:
        attributes["type"] = type_
    return CloudEvent(attributes, orjson.dumps(payload))


def app(message: str, type_: str | None = None) -> web.Application:
    async def handle(events: list[CloudEvent]) -> web.Response:
        if len(events) != 1:
            return error(400, "send one event at a time: a reply is a single event")
        try:
            out = append(events[0], message, type_)
        except NotAppendable as e:
            log.warning("event %s: %s", events[0].id, e)
            return error(400, str(e))
        log.info("event %s (type %s): appended %r", events[0].id, events[0].type, message)
        return reply(out)

    return build_app(handle)
