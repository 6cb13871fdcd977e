"""eventing.knative.dev/v1alpha1: EventTransform (Knative 1.18) and RequestReply (1.17/1.20).

Fields, defaults and validation follow Knative's types and webhook
(pkg/apis/eventing/v1alpha1); what rabbitmesh makes of them is in docs/eventtransform.md and
docs/requestreply.md.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from rabbitmesh.durations import parse_duration
from rabbitmesh.resources.base import FieldError, Model, Resource
from rabbitmesh.resources.duck import DeliverySpec, Destination, KReference
from rabbitmesh.resources.registry import register
from rabbitmesh.transform.jsonata import check_expression

GROUP = "eventing.knative.dev"

# --- EventTransform -------------------------------------------------------------------------


class JsonataSpec(Model):
    expression: str = ""


class ReplySpec(Model):
    """How the sink's response becomes the EventTransform's reply: transformed or dropped."""

    jsonata: JsonataSpec | None = None
    discard: bool | None = None


class EventTransformSpec(Model):
    sink: Destination | None = None
    reply: ReplySpec | None = None
    jsonata: JsonataSpec | None = None


@register(GROUP, ("v1alpha1",), "eventtransforms", addressable=True)
class EventTransform(Resource):
    spec: EventTransformSpec

    def check(self) -> None:
        s = self.spec
        # Knative's webhook: exactly one transformation (JSONata is the only one there is).
        if s.jsonata is None:
            raise FieldError("spec.jsonata", "missing field(s): exactly one transformation")
        _check_jsonata(s.jsonata, "spec.jsonata")
        if s.reply is None:
            return
        if s.sink is None:
            raise FieldError("spec.reply", "reply is set without spec.sink")
        if s.reply.jsonata is not None and s.reply.discard:
            raise FieldError("spec.reply", "expected exactly one, got both: [jsonata, discard]")
        if s.reply.jsonata is not None:
            _check_jsonata(s.reply.jsonata, "spec.reply.jsonata")

    @property
    def reply_expression(self) -> str | None:
        r = self.spec.reply
        return r.jsonata.expression if r is not None and r.jsonata is not None else None

    @property
    def discard_reply(self) -> bool:
        return bool(self.spec.reply is not None and self.spec.reply.discard)


def _check_jsonata(spec: JsonataSpec, path: str) -> None:
    if not spec.expression.strip():
        raise FieldError(f"{path}.expression", "missing field(s): a JSONata expression")
    problem = check_expression(spec.expression)
    if problem is not None:
        raise FieldError(f"{path}.expression", f"invalid JSONata expression: {problem}")


# --- RequestReply ---------------------------------------------------------------------------

DEFAULT_CORRELATION_ATTRIBUTE = "correlationid"
DEFAULT_REPLY_ATTRIBUTE = "replyid"
DEFAULT_TIMEOUT = "PT30S"
_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")
#: Attributes every event has: overwriting one would break the event, or match every event.
_RESERVED = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
)


class RequestReplySpec(Model):
    broker_ref: KReference
    correlation_attribute: str = DEFAULT_CORRELATION_ATTRIBUTE
    reply_attribute: str = DEFAULT_REPLY_ATTRIBUTE
    timeout: str = DEFAULT_TIMEOUT
    delivery: DeliverySpec | None = None

    @model_validator(mode="after")
    def _default_api_version(self) -> RequestReplySpec:
        # Knative's default; with it the ref is found by reconciler/dependencies.py, so a
        # Broker's change reaches its RequestReplies.
        if self.broker_ref.api_version is None:
            self.broker_ref.api_version = "eventing.knative.dev/v1"
        return self


@register(GROUP, ("v1alpha1",), "requestreplies", addressable=True)
class RequestReply(Resource):
    spec: RequestReplySpec = Field()

    def check(self) -> None:
        ref = self.spec.broker_ref
        if ref.kind != "Broker":
            raise FieldError("spec.brokerRef.kind", f"invalid value: {ref.kind} (must be Broker)")
        if ref.api_version not in (None, "eventing.knative.dev/v1"):
            raise FieldError(
                "spec.brokerRef.apiVersion",
                f"invalid value: {ref.api_version} (must be eventing.knative.dev/v1)",
            )
        if not ref.name:
            raise FieldError("spec.brokerRef.name", "missing field(s)")
        if ref.namespace not in (None, "", self.namespace):
            raise FieldError(
                "spec.brokerRef.namespace",
                f"invalid value: {ref.namespace} (the broker must be in the RequestReply's "
                f"namespace, {self.namespace})",
            )
        for field, value in (
            ("correlationAttribute", self.spec.correlation_attribute),
            ("replyAttribute", self.spec.reply_attribute),
        ):
            if not _ATTRIBUTE.match(value) or value in _RESERVED:
                raise FieldError(
                    f"spec.{field}",
                    f"invalid value: {value!r} (a CloudEvents extension name: 1-20 lowercase "
                    "letters or digits, not a core attribute)",
                )
        if self.spec.correlation_attribute == self.spec.reply_attribute:
            raise FieldError("spec.replyAttribute", "must differ from spec.correlationAttribute")
        try:
            timeout = parse_duration(self.spec.timeout).total_seconds()
        except ValueError as e:
            raise FieldError("spec.timeout", str(e)) from None
        if timeout <= 0:
            raise FieldError("spec.timeout", "must be longer than zero")

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.spec.timeout).total_seconds()
