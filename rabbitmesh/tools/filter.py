"""`rabbitmesh filter --expression E`: a Parallel branch filter in CESQL.

Replies with the event, unchanged, when E evaluates to true without errors (the CloudEvents
filter semantics); otherwise answers an empty 200, which drops the event for that branch.
"""

from __future__ import annotations

import logging

from aiohttp import web

from rabbitmesh.cesql import Expression
from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.tools.service import build_app, error, no_reply, reply

log = logging.getLogger("rabbitmesh.filter")


def passes(expression: Expression, event: CloudEvent) -> bool:
    return expression.matches(event.attributes)


def app(expression: Expression) -> web.Application:
    async def handle(events: list[CloudEvent]) -> web.Response:
        if len(events) != 1:
            return error(400, "send one event at a time: a reply is a single event")
        event = events[0]
        if passes(expression, event):
            log.info("event %s (type %s) passes %s", event.id, event.type, expression.source)
            return reply(event)
        log.info("event %s (type %s) filtered out", event.id, event.type)
        return no_reply()

    return build_app(handle)
