"""The helper services' pure parts: event-display's format, appender, filter, heartbeats."""

from __future__ import annotations

import json
from datetime import timedelta

import orjson
import pytest

from rabbitmesh.cesql import compile_expression
from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.durations import parse_go_duration
from rabbitmesh.tools import heartbeats
from rabbitmesh.tools.appender import NotAppendable, append
from rabbitmesh.tools.event_display import render
from rabbitmesh.tools.filter import passes


def event(data: bytes | None = b'{"id":2,"label":""}', **attrs: object) -> CloudEvent:
    base = {
        "specversion": "1.0",
        "type": "dev.knative.eventing.samples.heartbeat",
        "source": "https://knative.dev/eventing/cmd/heartbeats/#event-test/mypod",
        "id": "2b72d7bf",
        "time": "2019-10-18T15:23:20.809775386Z",
        "datacontenttype": "application/json",
    }
    base.update(attrs)  # type: ignore[arg-type]
    return CloudEvent({k: v for k, v in base.items() if v is not None}, data)  # type: ignore[misc]


def test_event_display_prints_like_knative():
    out = render(event(beats=True, heart="yes", the=42))
    assert out == (
        "☁️  cloudevents.Event\n"
        "Context Attributes,\n"
        "  specversion: 1.0\n"
        "  type: dev.knative.eventing.samples.heartbeat\n"
        "  source: https://knative.dev/eventing/cmd/heartbeats/#event-test/mypod\n"
        "  id: 2b72d7bf\n"
        "  time: 2019-10-18T15:23:20.809775386Z\n"
        "  datacontenttype: application/json\n"
        "Extensions,\n"
        "  beats: true\n"
        "  heart: yes\n"
        "  the: 42\n"
        "Data,\n"
        "  {\n"
        '    "id": 2,\n'
        '    "label": ""\n'
        "  }\n"
    )


def test_event_display_text_binary_and_no_data():
    assert render(event(b"plain words", datacontenttype="text/plain")).endswith(
        "Data,\n  plain words\n"
    )
    assert render(event(b"\xff\x00", datacontenttype="application/octet-stream")).endswith(
        "Data (binary),\n  /wA=\n"
    )
    no_data = render(event(None, datacontenttype=None, subject="s"))
    assert "Data" not in no_data and "Extensions" not in no_data
    assert "/#event-test/mypod\n  subject: s\n  id:" in no_data
    # JSON without datacontenttype (JSON is implied) is indented too; bad JSON is shown as is.
    assert '  {\n    "a": 1\n  }' in render(event(b'{"a":1}', datacontenttype=None))
    assert render(event(b"{nope")).endswith("Data,\n  {nope\n")


def test_appender_appends_keeps_attributes_and_other_fields():
    src = event(b'{"id":1,"message":"hello, sequence flow"}', myext="x")
    out = append(src, " - Handled by SQ-01")
    assert orjson.loads(out.data) == {"id": 1, "message": "hello, sequence flow - Handled by SQ-01"}
    assert out.attributes == {**src.attributes, "datacontenttype": "application/json"}
    assert append(event(None, datacontenttype=None), "m").data == b'{"message":"m"}'
    assert append(src, "!", type_="samples.http.mod3").type == "samples.http.mod3"


@pytest.mark.parametrize(
    ("data", "ct", "why"),
    [
        (b"hi", "text/plain", "must be JSON"),
        (b"{bad", "application/json", "not valid JSON"),
        (b"[1]", "application/json", "JSON object"),
        (b'{"message": 3}', "application/json", "must be a string"),
    ],
)
def test_appender_refuses_what_it_cannot_append_to(data, ct, why):
    with pytest.raises(NotAppendable, match=why):
        append(event(data, datacontenttype=ct), "m")


def test_filter_passes_only_on_true_without_errors():
    img = compile_expression("type = 'img.hj.com'")
    assert passes(img, event(type="img.hj.com"))
    assert not passes(img, event(type="text.hj.com"))
    assert not passes(compile_expression("int(missing) > 1"), event())  # an error: no
    assert not passes(compile_expression("'yes'"), event())  # not a boolean: no


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("500ms", 0.5), ("1m30s", 90), ("1.5h", 5400), ("2", 2), ("0.25", 0.25)],
)
def test_heartbeat_period(text, seconds):
    assert heartbeats.parse_period(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1x", "s", "-1s", "0", "1s2"])
def test_bad_heartbeat_periods(text):
    with pytest.raises(ValueError):
        heartbeats.parse_period(text)


def test_go_durations():
    assert parse_go_duration("1h2m3.5s") == timedelta(hours=1, minutes=2, seconds=3.5)
    assert parse_go_duration("10us") == timedelta(microseconds=10)


def test_heartbeat_event_and_overrides():
    overrides = heartbeats.parse_overrides('{"extensions": {"heart": "no", "team": "a"}}')
    beat = heartbeats.beat(
        3,
        source=heartbeats.default_source({"NAME": "hb", "NAMESPACE": "ns"}),
        label="L",
        overrides=overrides,
    )
    a = beat.attributes
    assert a["type"] == "dev.knative.eventing.samples.heartbeat"
    assert a["source"] == "https://knative.dev/eventing/cmd/heartbeats/#ns/hb"
    assert (a["the"], a["beats"], a["heart"], a["team"]) == (42, True, "no", "a")
    assert a["datacontenttype"] == "application/json" and a["time"].endswith("Z")
    assert json.loads(beat.data) == {"id": 3, "label": "L"}
    assert heartbeats.beat(1, source="s").id != heartbeats.beat(1, source="s").id
    assert heartbeats.parse_overrides(None) == {} and heartbeats.parse_overrides("{}") == {}
    with pytest.raises(ValueError):
        heartbeats.parse_overrides("{not json")
