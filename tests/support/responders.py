"""Sink responders that behave like the functions in flows: appenders, filters, echoes."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from tests.support.sink import Received, Reply, Responder


def event_headers(r: Received) -> dict[str, str]:
    """The request's CloudEvent headers (binary mode), to answer with the same event."""
    out = {k: v for k, v in r.headers.items() if k.lower().startswith("ce-")}
    if "content-type" in r.headers:
        out["content-type"] = r.headers["content-type"]
    return out


def data(r: Received) -> dict:
    return orjson.loads(r.body) if r.body else {}


def message(r: Received) -> str:
    return data(r).get("message", "")


def echo(status: int = 200) -> Responder:
    """Reply with the event received, unchanged."""
    return lambda r, _i: Reply(status, event_headers(r), r.body)


def appending(suffix: str) -> Responder:
    """Reply with the event, `suffix` appended to data.message (as Knative's appender)."""

    def answer(r: Received, _i: int) -> Reply:
        d = data(r)
        d["message"] = d.get("message", "") + suffix
        headers = event_headers(r)
        headers["content-type"] = "application/json"
        return Reply(200, headers, orjson.dumps(d))

    return answer


def filtering(keep: Callable[[Received], bool]) -> Responder:
    """Reply with the event when `keep` says so, else an empty 200 (a Parallel filter)."""
    return lambda r, i: echo()(r, i) if keep(r) else Reply(200)


def of_type(type_: str) -> Callable[[Received], bool]:
    return lambda r: r.headers.get("ce-type") == type_
