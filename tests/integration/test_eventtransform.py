"""EventTransform (eventing.knative.dev/v1alpha1): JSONata over the whole event, through a real
broker, real triggers and real subscribers (docs/eventtransform.md)."""

from __future__ import annotations

import orjson
import pytest

from tests.support.events import binary_headers, post, post_binary
from tests.support.responders import data
from tests.support.sink import Reply

pytestmark = pytest.mark.integration

EXPRESSION = """
{
  "specversion": "1.0",
  "id": id,
  "type": "transformed." & type,
  "source": source,
  "datacontenttype": "application/json",
  "data": {"user": data.name, "total": $sum(data.items.price), "via": source}
}
"""


def transform(name: str, expression: str = EXPRESSION, extra: str = "") -> str:
    body = "\n".join("              " + line for line in expression.strip().splitlines())
    return f"""
        apiVersion: eventing.knative.dev/v1alpha1
        kind: EventTransform
        metadata: {{name: {name}}}
        spec:
          {extra}
          jsonata:
            expression: |
{body}
        ---
        """


ORDER = {"name": "ada", "items": [{"price": 2}, {"price": 3.5}]}


async def test_trigger_to_transform_replies_into_the_broker(start_mesh, make_sink):
    """Trigger -> EventTransform (subscriber.ref): the transformed event is the reply, so it
    comes back into the broker and reaches the trigger that wants the new type."""
    sink = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: default}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: to-transform}}
        spec:
          broker: default
          filter: {{attributes: {{type: order.created}}}}
          subscriber:
            ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: shape}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: transformed}}
        spec:
          broker: default
          filter: {{attributes: {{type: transformed.order.created}}}}
          subscriber: {{uri: "{sink.url}"}}
        ---
        """
        + transform("shape")
    )
    et = mesh.server.ctx.get("EventTransform", "default", "shape")
    assert et.status.ready == "True"
    assert et.status.address.url == mesh.settings.base_url + "/eventtransforms/default/shape"
    status, eid = await post_binary(mesh.url + "/default/default", "order.created", ORDER)
    assert status == 202
    (r,) = await sink.wait_for(1)
    assert r.headers["ce-type"] == "transformed.order.created"
    assert r.ce_id == eid and r.headers["ce-source"] == "tests"
    assert data(r) == {"user": "ada", "total": 5.5, "via": "tests"}


async def test_sink_and_reply_transform(start_mesh, make_sink):
    """With spec.sink the transformed event goes there, and spec.reply.jsonata reshapes the
    sink's response into the EventTransform's own response."""

    def answer(r, _i):
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "reply-1",
            "ce-type": "order.priced",
            "ce-source": "pricer",
            "content-type": "application/json",
        }
        return Reply(200, headers, orjson.dumps({"price": data(r)["total"] * 2}))

    sink = await make_sink(answer)
    reply_expr = (
        '{"specversion": "1.0", "id": id, "type": type & ".checked", "source": source, '
        '"datacontenttype": "application/json", "data": {"doubled": data.price}}'
    )
    mesh = await start_mesh(
        transform(
            "fwd",
            extra=f'sink: {{uri: "{sink.url}"}}\n          reply:\n            jsonata:\n'
            f"              expression: '{reply_expr}'",
        )
    )
    status, headers, body = await post(
        mesh.url + "/eventtransforms/default/fwd",
        headers=binary_headers("order.created", "e1"),
        body=orjson.dumps(ORDER),
    )
    assert status == 200, body
    (r,) = await sink.wait_for(1)
    assert r.headers["ce-type"] == "transformed.order.created"
    assert data(r)["total"] == 5.5
    event = orjson.loads(body)
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    assert event["type"] == "order.priced.checked" and event["data"] == {"doubled": 11.0}


async def test_reply_discard_answers_with_the_sink_status_only(start_mesh, make_sink):
    sink = await make_sink(lambda r, _i: Reply(200, {"ce-specversion": "1.0"}, b"secret"))
    mesh = await start_mesh(
        transform("drop", extra=f'sink: {{uri: "{sink.url}"}}\n          reply: {{discard: true}}')
    )
    status, _, body = await post(
        mesh.url + "/eventtransforms/default/drop",
        headers=binary_headers("order.created"),
        body=orjson.dumps(ORDER),
    )
    assert (status, body) == (200, b"")
    await sink.wait_for(1)


async def test_a_result_that_is_no_cloudevent_fails_the_delivery_and_dead_letters(
    start_mesh, make_sink
):
    """The expression yields no valid CloudEvent: 422 naming why; through a trigger that is a
    failed delivery, dead-lettered with knativeerrorcode 422."""
    dls = await make_sink()
    mesh = await start_mesh(
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: default}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: t}}
        spec:
          broker: default
          subscriber:
            ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: bad}}
          delivery:
            retry: 1
            backoffDelay: PT0.05S
            deadLetterSink: {{uri: "{dls.url}"}}
        ---
        """
        + transform("bad", '{"id": id, "data": data}')
    )
    status, _, body = await post(
        mesh.url + "/eventtransforms/default/bad",
        headers=binary_headers("x"),
        body=b"{}",
    )
    assert status == 422
    assert b"not a valid CloudEvent" in body and b"specversion" in body
    status, eid = await post_binary(mesh.url + "/default/default", "x", {"a": 1})
    assert status == 202
    (r,) = await dls.wait_for(1)
    assert r.ce_id == eid and r.headers["ce-knativeerrorcode"] == "422"


async def test_undefined_result_and_runaway_expression_are_422(start_mesh):
    mesh = await start_mesh(
        transform("nothing", "nope.nothing")
        + transform("loop", "($f := function($x){ $f($x) + 1 }; $f(1))")
    )
    for name in ("nothing", "loop"):
        status, _, body = await post(
            mesh.url + f"/eventtransforms/default/{name}", headers=binary_headers("x"), body=b"{}"
        )
        assert status == 422, (name, body)
    status, _, _ = await post(
        mesh.url + "/eventtransforms/default/absent", headers=binary_headers("x"), body=b"{}"
    )
    assert status == 404
