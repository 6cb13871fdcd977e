"""The event types that get their own value of the `event_type` metric label.

A label value per type that senders choose would let anyone grow the series without bound, or
fill a first-come cap with junk so that real types are counted as `other` for good. So the
label set comes from what the operator configured, never from traffic: the exact types
Triggers filter on (`filter.attributes`, `exact`, CESQL `type = '…'`/`IN`, as their binding
keys say), the types sources declare, and EventTypes — auto-created ones last, as senders
chose them (their number is bounded per broker). The control plane hands this to
`metrics.set_known_types` after every rebuild, so it follows hot reloads.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from rabbitmesh.filters.bindings import binding_keys
from rabbitmesh.filters.errors import FilterError
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.eventing import Trigger
from rabbitmesh.resources.eventtypes import EventType

Key = tuple[str, str, str]
_WILDCARDS = frozenset({"#", "*"})


def known_types(resources: Iterable[Resource], auto: Collection[Key] = ()) -> Iterator[str]:
    """Configured event types, most trusted first: Trigger filters, sources' declared types,
    EventTypes written by people, then auto-created EventTypes (`auto`: their keys)."""
    resources = list(resources)
    for res in resources:
        if isinstance(res, Trigger):
            yield from _trigger_types(res)
    for res in resources:
        for type_, _source in res.declared_event_types():
            yield type_
    later = []
    for res in resources:
        if isinstance(res, EventType) and res.ce_type:
            if res.key in auto:
                later.append(res.ce_type)
            else:
                yield res.ce_type
    yield from later


def _trigger_types(trigger: Trigger) -> list[str]:
    attrs = trigger.spec.filter.attributes if trigger.spec.filter else None
    try:
        keys = binding_keys(attrs, trigger.spec.filters)
    except FilterError:
        return []
    # A key with no wildcard word is an exact type (binding_keys never truncates one).
    return [k for k in keys if k and not _WILDCARDS.intersection(k.split("."))]
