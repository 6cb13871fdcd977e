"""The in-memory CloudEvent: context attributes plus the data as raw bytes.

Attributes keep the types the CloudEvents type system allows on the wire we got them from
(str, int, bool); `time` and URI attributes stay strings exactly as received, so nothing is
normalised or invented on the way through. Data is always bytes: binary-mode bodies are kept
byte-exact, and structured JSON `data` is serialised once when the event is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

AttributeValue = str | int | bool

#: Context attributes each spec version defines (everything else is an extension).
SPEC_ATTRIBUTES: dict[str, frozenset[str]] = {
    "1.0": frozenset(
        {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
    ),
    "0.3": frozenset(
        {
            "specversion",
            "id",
            "source",
            "type",
            "datacontenttype",
            "datacontentencoding",
            "schemaurl",
            "subject",
            "time",
        }
    ),
}
REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")


@dataclass(slots=True)
class CloudEvent:
    attributes: dict[str, AttributeValue]
    data: bytes | None = None
    trace: dict[str, str] | None = None
    """W3C trace context (`traceparent`, `tracestate`) of the hop that carried the event.

    Not an event attribute: it travels beside the event in HTTP and AMQP headers, so a
    trace is followed from ingress through RabbitMQ to every subscriber and reply."""

    @property
    def id(self) -> str:
        return str(self.attributes["id"])

    @property
    def type(self) -> str:
        return str(self.attributes["type"])

    @property
    def source(self) -> str:
        return str(self.attributes["source"])

    @property
    def specversion(self) -> str:
        return str(self.attributes["specversion"])

    @property
    def datacontenttype(self) -> str | None:
        v = self.attributes.get("datacontenttype")
        return None if v is None else str(v)

    def copy(self) -> CloudEvent:
        return CloudEvent(dict(self.attributes), self.data, self.trace)
