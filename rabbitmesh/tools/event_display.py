"""`rabbitmesh event-display`: print every event received, as Knative's event_display does.

    ☁️  cloudevents.Event
    Context Attributes,
      specversion: 1.0
      type: dev.knative.eventing.samples.heartbeat
      source: https://knative.dev/eventing/cmd/heartbeats/#event-test/mypod
      id: 2b72d7bf-c38f-4a98-a433-608fbcdd2596
      time: 2019-10-18T15:23:20.809775386Z
      datacontenttype: application/json
    Extensions,
      beats: true
      heart: yes
      the: 42
    Data,
      {
        "id": 2,
        "label": ""
      }

Context attributes come in the CloudEvents SDK's order, extensions sorted by name, JSON data
indented (other text as is, binary as base64). Each event is flushed as soon as it arrives.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import IO

from aiohttp import web

from rabbitmesh.cloudevents import SPEC_ATTRIBUTES, AttributeValue, CloudEvent, is_json_content_type
from rabbitmesh.tools.service import build_app, no_reply

HEADER = "☁️  cloudevents.Event"
#: The order the Go SDK's EventContext.String() prints context attributes in.
CONTEXT_ORDER = (
    "specversion",
    "type",
    "source",
    "subject",
    "id",
    "time",
    "dataschema",
    "schemaurl",
    "datacontenttype",
    "datacontentencoding",
)


def _value(v: AttributeValue) -> str:
    if v is True or v is False:
        return "true" if v else "false"
    return str(v)


def _data(event: CloudEvent) -> tuple[str, str]:
    """The data section's title and text."""
    data = event.data or b""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "Data (binary),", base64.b64encode(data).decode("ascii")
    ct = event.datacontenttype
    if ct is None or is_json_content_type(ct):
        try:
            parsed = json.loads(text)
        except ValueError:
            return "Data,", text
        return "Data,", json.dumps(parsed, indent=2, ensure_ascii=False)
    return "Data,", text


def render(event: CloudEvent) -> str:
    """One event, readably, ending with a newline."""
    attrs = event.attributes
    known = SPEC_ATTRIBUTES.get(str(attrs.get("specversion")), SPEC_ATTRIBUTES["1.0"])
    lines = [HEADER, "Context Attributes,"]
    lines += [f"  {name}: {_value(attrs[name])}" for name in CONTEXT_ORDER if name in attrs]
    extensions = sorted(k for k in attrs if k not in known)
    if extensions:
        lines.append("Extensions,")
        lines += [f"  {name}: {_value(attrs[name])}" for name in extensions]
    if event.data is not None:
        title, text = _data(event)
        lines.append(title)
        lines.append("  " + text.replace("\n", "\n  "))
    return "\n".join(lines) + "\n"


def app(out: IO[bytes] | None = None) -> web.Application:
    stream = out if out is not None else sys.stdout.buffer

    async def display(events: list[CloudEvent]) -> web.Response:
        for event in events:
            stream.write(render(event).encode("utf-8"))
        stream.flush()
        return no_reply()

    return build_app(display)
