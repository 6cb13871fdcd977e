"""Structured logs: one JSON object per line with the delivery fields, never event data."""

from __future__ import annotations

import logging

import orjson

from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.dispatch.policy import DeliveryPolicy
from rabbitmesh.dispatch.worker import Subscriber, log_fields
from rabbitmesh.logs import JsonFormatter


def test_json_line_carries_event_id_type_subscriber_and_attempt():
    event = CloudEvent(
        {"id": "e1", "type": "t1", "source": "s", "specversion": "1.0"}, b'{"secret": "data"}'
    )
    sub = Subscriber(
        "trigger=default/tr",
        "default",
        "http://x/",
        DeliveryPolicy(1, "linear", 0.1, None, None, None, "binary"),
    )
    record = logging.LogRecord(
        "rabbitmesh.dispatch",
        logging.WARNING,
        __file__,
        1,
        "delivery failed: event id=%s",
        ("e1",),
        None,
    )
    for k, v in log_fields(event, sub, 3).items():
        setattr(record, k, v)
    line = JsonFormatter().format(record)
    doc = orjson.loads(line)
    assert "\n" not in line
    assert doc["event_id"] == "e1" and doc["event_type"] == "t1"
    assert doc["subscriber"] == "trigger=default/tr" and doc["attempt"] == 3
    assert doc["level"] == "warning" and doc["message"] == "delivery failed: event id=e1"
    assert "secret" not in line


def test_aiormq_unhandled_return_line_keeps_the_line_but_not_the_body(caplog):
    """aiormq logged `Unhandled message DeliveredMessage(..., body=b'<the whole event>')`
    for returns whose publish no longer waited (about 50 per attack run, 4 MB each)."""
    import io

    from aiormq.abc import DeliveredMessage
    from pamqp import commands as spec
    from pamqp.header import ContentHeader

    from rabbitmesh.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info")
        stream = io.StringIO()
        root.handlers[0].stream = stream  # type: ignore[attr-defined]
        message = DeliveredMessage(
            delivery=spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE"),
            header=ContentHeader(0, 17, spec.Basic.Properties(message_id="e-42")),
            body=b'{"secret": "data"}',
            channel=None,  # type: ignore[arg-type]
        )
        logging.getLogger("aiormq.channel").error("Unhandled message %r returning", message)
        line = stream.getvalue()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert "Unhandled message DeliveredMessage(" in line
    assert "e-42" in line and "body=<18 bytes>" in line
    assert "secret" not in line
