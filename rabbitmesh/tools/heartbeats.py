"""`rabbitmesh heartbeats`: post a heartbeat event to `$K_SINK` every `--period`.

What a ContainerSource runs, like Knative's heartbeats sample: type
`dev.knative.eventing.samples.heartbeat`, source `https://knative.dev/eventing/cmd/heartbeats/
#{namespace}/{name}`, extensions `the: 42`, `heart: yes`, `beats: true`, data
`{"id": <sequence>, "label": <label>}`, a fresh id and the time of each beat. `K_CE_OVERRIDES`
(`{"extensions": {...}}`) adds or replaces extensions. A failed post is logged and the next
beat comes on time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from rabbitmesh.cloudevents import AttributeValue, CloudEvent, encode_binary
from rabbitmesh.durations import parse_go_duration

log = logging.getLogger("rabbitmesh.heartbeats")

DEFAULT_TYPE = "dev.knative.eventing.samples.heartbeat"


def parse_period(text: str) -> float:
    """Seconds from `--period`: a number of seconds (`5`, `0.5`) or a Go duration (`500ms`)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_go_duration(text).total_seconds()
    if seconds <= 0:
        raise ValueError(f"period must be positive, got {text!r}")
    return seconds


def parse_overrides(raw: str | None) -> dict[str, AttributeValue]:
    """The extensions of `K_CE_OVERRIDES` (Knative's CloudEventOverrides JSON)."""
    if not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"K_CE_OVERRIDES is not JSON: {e}") from None
    ext = doc.get("extensions") if isinstance(doc, dict) else None
    if ext is None:
        return {}
    if not isinstance(ext, dict):
        raise ValueError("K_CE_OVERRIDES: extensions must be an object")
    out: dict[str, AttributeValue] = {}
    for k, v in ext.items():
        out[str(k)] = v if isinstance(v, (str, int, bool)) else orjson.dumps(v).decode()
    return out


def default_source(env: Mapping[str, str]) -> str:
    ns = env.get("NAMESPACE") or env.get("POD_NAMESPACE") or "default"
    name = env.get("NAME") or env.get("POD_NAME") or "heartbeats"
    return f"https://knative.dev/eventing/cmd/heartbeats/#{ns}/{name}"


def beat(
    sequence: int,
    *,
    source: str,
    type_: str = DEFAULT_TYPE,
    label: str = "",
    overrides: Mapping[str, AttributeValue] | None = None,
) -> CloudEvent:
    attributes: dict[str, AttributeValue] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "the": 42,
        "heart": "yes",
        "beats": True,
    }
    attributes.update(overrides or {})
    return CloudEvent(attributes, orjson.dumps({"id": sequence, "label": label}))


async def run(
    sink: str,
    period: float,
    *,
    source: str,
    type_: str,
    label: str,
    overrides: Mapping[str, Any],
    one_shot: bool = False,
) -> None:
    """Beat until cancelled (or once with `one_shot`), one beat every `period` seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session:
        sequence = 0
        while True:
            sequence += 1
            event = beat(sequence, source=source, type_=type_, label=label, overrides=overrides)
            headers, body = encode_binary(event)
            try:
                async with session.post(
                    sink, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        log.info("beat %d sent to %s (%d)", sequence, sink, resp.status)
                    else:
                        log.warning("beat %d refused by %s: HTTP %d", sequence, sink, resp.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("beat %d not sent to %s: %s", sequence, sink, e or type(e).__name__)
            if one_shot:
                return
            # Ticks on a fixed schedule, as Go's time.Ticker: a slow post does not push the
            # next beats back.
            next_at = started + sequence * period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
