"""What the dispatcher's one HTTP attempt reports when the event cannot even be sent."""

from __future__ import annotations

import aiohttp

from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.dispatch.sender import UNSENDABLE_CODE, Outcome, send


def deep_event() -> CloudEvent:
    attrs = {
        "specversion": "1.0",
        "id": "deep",
        "source": "tests",
        "type": "t",
        "datacontenttype": "application/json",
    }
    return CloudEvent(attrs, b"[" * 1000 + b"]" * 1000)


async def test_data_too_deep_for_the_json_format_is_unsendable_not_an_exception():
    async with aiohttp.ClientSession() as session:
        # No server listens on port 9: an attempt that left the process would fail as 0.
        outcome = await send(
            session,
            "http://127.0.0.1:9/",
            deep_event(),
            namespace="default",
            structured=True,
            timeout=1.0,
            reply_must_be_event=True,
        )
    assert outcome.unsendable and not outcome.ok and not outcome.retryable
    assert outcome.error_code == UNSENDABLE_CODE == 422
    assert b"nested too deeply" in outcome.body


def test_unsendable_is_never_retryable_whatever_the_status():
    assert Outcome(False, 0).retryable  # no response: retried
    assert not Outcome(False, 0, unsendable=True).retryable
    assert Outcome(False, 0).error_code == 500
