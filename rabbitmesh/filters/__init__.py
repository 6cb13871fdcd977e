"""Trigger filtering: Knative `spec.filter.attributes`, `spec.filters` (Subscriptions API
dialects, CESQL included) and the RabbitMQ binding keys that pre-filter by event type.

    flt = compile_trigger_filter(trigger.spec.filter.attributes, trigger.spec.filters)
    flt.matches(event_attributes)          # -> bool
    binding_keys(attributes, filters)      # -> ["com.example.#"]

Invalid filters raise `FilterError(path, message)`.
"""

from rabbitmesh.filters.attributes import AttributesFilter
from rabbitmesh.filters.base import MATCH_ALL, EventFilter, MatchAll
from rabbitmesh.filters.bindings import binding_keys, routing_key_for_type
from rabbitmesh.filters.dialects import compile_filters, compile_trigger_filter
from rabbitmesh.filters.errors import FilterError

__all__ = [
    "MATCH_ALL",
    "AttributesFilter",
    "EventFilter",
    "FilterError",
    "MatchAll",
    "binding_keys",
    "compile_filters",
    "compile_trigger_filter",
    "routing_key_for_type",
]
