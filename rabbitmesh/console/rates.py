"""`GET /console/api/rates`: this process's event counters, per resource, for the graph.

The page polls it and divides the differences by the time between two answers, so the
server keeps no state per viewer. The numbers are the Prometheus counters of
rabbitmesh/metrics.py summed over event types (what `/metrics` shows, regrouped).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from rabbitmesh.metrics import REGISTRY

#: metric family -> the counter name in the answer (per subscriber label).
_DISPATCH = {
    "event_retries": "retries",
    "event_dead_lettered": "deadLettered",
    "event_dropped": "dropped",
}


def snapshot() -> dict[str, Any]:
    """{"time": s, "ingress": {"Kind/ns/name": {"accepted", "refused"}},
    "dispatch": {"trigger=ns/name": {"ok", "failed", "retries", "deadLettered", "dropped"}}}"""
    ingress: dict[str, dict[str, float]] = defaultdict(lambda: {"accepted": 0.0, "refused": 0.0})
    dispatch: dict[str, dict[str, float]] = defaultdict(
        lambda: {"ok": 0.0, "failed": 0.0, "retries": 0.0, "deadLettered": 0.0, "dropped": 0.0}
    )
    for family in REGISTRY.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # `_created` timestamps
            labels = sample.labels
            if family.name == "event_count":
                key = f"{labels['kind']}/{labels['namespace']}/{labels['name']}"
                ok = labels["response_code_class"] == "2xx"
                ingress[key]["accepted" if ok else "refused"] += sample.value
            elif family.name == "dispatch_event_count":
                ok = labels["response_code_class"] == "2xx"
                dispatch[labels["subscriber"]]["ok" if ok else "failed"] += sample.value
            elif family.name in _DISPATCH:
                dispatch[labels["subscriber"]][_DISPATCH[family.name]] += sample.value
    return {"time": time.monotonic(), "ingress": ingress, "dispatch": dispatch}
