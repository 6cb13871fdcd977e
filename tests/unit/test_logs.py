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
