"""Trigger filters (docs/contract.md §5) end to end: real RabbitMQ, real HTTP subscriber, one mesh.

One Broker carries one Trigger per filter case, each delivering to its own path of one real
HTTP sink. A fixed set of events is posted once (binary mode, where every extension is a
string, and one structured event whose extensions are a JSON boolean and integer); every
trigger must then have received exactly the expected subset.

Synchronisation without sleeps: a 202 from the ingress means RabbitMQ confirmed the event, so
it is already in every queue whose bindings (read back from RabbitMQ) match its type. Each
trigger's worker counts every message it took as `delivered` (after the subscriber answered)
or `filtered`; once those add up to the number of events routed to its queue, nothing more can
arrive at that trigger's sink.

Invalid filters are rejected at load time; one case goes through a real `rabbitmesh run`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import yaml

from rabbitmesh.amqp.names import Names
from rabbitmesh.resources.loader import ManifestError, load_text
from tests.support.events import post_binary, post_structured
from tests.support.manifests import broker_and_trigger
from tests.support.mesh import InProcessMesh, MeshProcess, unique_prefix, write_manifests
from tests.support.rabbit import rabbitmqctl
from tests.support.sink import Sink
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NS = "default"
BROKER = "br"

#: id -> (type, extension attributes sent as ce- headers, so every value is a string).
EVENTS: dict[str, tuple[str, dict[str, str]]] = {
    "e1": ("com.example.order.created", {"region": "eu-west", "sequence": "7", "urgent": "true"}),
    "e2": ("com.example.order.created", {}),
    "e3": ("com.example.order.deleted", {"region": "us-east", "sequence": "3", "urgent": "false"}),
    "e4": ("com.example.order.deleted", {"region": "eu-north", "sequence": "x12"}),
    "e5": ("org.other.thing", {"region": "eu-west", "sequence": "10", "urgent": "true"}),
    "e6": ("org.other.thing.created", {"urgent": "false"}),
    "e7": ("com.example.user.created", {"region": "apac"}),
}
#: Posted in structured mode: its extensions keep their JSON types through RabbitMQ.
TYPED_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "e8",
    "source": "tests",
    "type": "net.typed.event",
    "region": "eu-south",
    "sequence": 8,
    "urgent": True,
    "data": {"n": 8},
}
TYPES = [type_ for type_, _ in EVENTS.values()] + [TYPED_EVENT["type"]]


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]  # the Trigger's spec.filter / spec.filters
    expected: frozenset[str]
    #: The binding keys RabbitMQ must hold for the trigger's queue, when the case is about them.
    bindings: tuple[str, ...] | None = None


def case(name: str, spec: dict[str, Any], expected: str, bindings: str | None = None) -> Case:
    return Case(
        name,
        spec,
        frozenset(expected.split()),
        None if bindings is None else tuple(sorted(bindings.split())),
    )


def cesql(expression: str) -> dict[str, Any]:
    return {"filters": [{"cesql": expression}]}


CASES = [
    case("no-filter", {}, "e1 e2 e3 e4 e5 e6 e7 e8", "#"),
    # exact / prefix / suffix, on `type` and on extensions that some events lack
    case(
        "exact-type",
        {"filters": [{"exact": {"type": "com.example.order.created"}}]},
        "e1 e2",
        "com.example.order.created",
    ),
    case("exact-extension", {"filters": [{"exact": {"region": "eu-west"}}]}, "e1 e5", "#"),
    case(
        "exact-typed-extensions",  # e8's true and 8 compare as their strings "true" and "8"
        {"filters": [{"exact": {"urgent": "true", "sequence": "8"}}]},
        "e8",
        "#",
    ),
    case(
        "exact-type-and-extension",  # e2 has the type but no `urgent`
        {"filters": [{"exact": {"type": "com.example.order.created", "urgent": "true"}}]},
        "e1",
        "com.example.order.created",
    ),
    case(
        "prefix-type",
        {"filters": [{"prefix": {"type": "com.example.order."}}]},
        "e1 e2 e3 e4",
        "com.example.order.#",
    ),
    case("prefix-extension", {"filters": [{"prefix": {"region": "eu-"}}]}, "e1 e4 e5 e8", "#"),
    case("suffix-type", {"filters": [{"suffix": {"type": ".created"}}]}, "e1 e2 e6 e7", "#"),
    # all / any / not
    case(
        "all",
        {
            "filters": [
                {"all": [{"exact": {"region": "eu-west"}}, {"prefix": {"type": "com.example."}}]}
            ]
        },
        "e1",
        "com.example.#",
    ),
    case(
        "any",
        {
            "filters": [
                {"any": [{"exact": {"type": "org.other.thing"}}, {"exact": {"urgent": "false"}}]}
            ]
        },
        "e3 e5 e6",
        "#",
    ),
    case(
        "any-narrowing",
        {
            "filters": [
                {
                    "any": [
                        {"exact": {"type": "org.other.thing"}},
                        {"prefix": {"type": "com.example.order."}},
                    ]
                }
            ]
        },
        "e1 e2 e3 e4 e5",
        "com.example.order.# org.other.thing",
    ),
    case("not-type", {"filters": [{"not": {"prefix": {"type": "com.example."}}}]}, "e5 e6 e8", "#"),
    case(
        "not-missing-extension",  # a missing `region` is not eu-west, so `not` accepts it
        {"filters": [{"not": {"exact": {"region": "eu-west"}}}]},
        "e2 e3 e4 e6 e7 e8",
        "#",
    ),
    case(
        "nested",  # filters > any > all > not > any > exact/suffix: five levels
        {
            "filters": [
                {"prefix": {"type": "com.example."}},
                {
                    "any": [
                        {"exact": {"urgent": "true"}},
                        {
                            "all": [
                                {
                                    "not": {
                                        "any": [
                                            {"exact": {"region": "us-east"}},
                                            {"suffix": {"type": ".deleted"}},
                                        ]
                                    }
                                },
                                {"not": {"exact": {"region": "apac"}}},
                            ]
                        },
                    ]
                },
            ]
        },
        "e1 e2",
        "com.example.#",
    ),
    # CESQL
    case("cesql-like", cesql("type LIKE 'com.example.%.created'"), "e1 e2 e7"),
    case(
        "cesql-like-prefix",
        cesql("type LIKE 'com.example.order.%' AND region LIKE 'eu-%'"),
        "e1 e4",
        "com.example.order.#",
    ),
    case("cesql-exists", cesql("EXISTS region AND NOT EXISTS urgent"), "e4 e7", "#"),
    # `sequence` arrives as the string "7": int() casts it; "x12" is a cast error -> no match;
    # events without `sequence` are a missingAttribute error -> no match.
    case("cesql-int-cast", cesql("int(sequence) > 5"), "e1 e5 e8"),
    case("cesql-boolean-true", cesql("urgent = TRUE"), "e1 e5 e8"),
    case("cesql-boolean-false", cesql("NOT BOOL(urgent)"), "e3 e6"),
    # e5 has type org.other.thing, but `subject` is missing everywhere: an error never matches.
    case("cesql-missing-attribute", cesql("subject = 'x' OR type = 'org.other.thing'"), "", "#"),
    # e1: 100 / 0 (math error), e4: int('x12') (cast error): both evaluate NOT(...) with an
    # error, and neither matches; e3: 100 / -4 = -25 -> NOT (FALSE) -> match.
    case("cesql-evaluation-error", cesql("NOT (100 / (int(sequence) - 7) > 0)"), "e3"),
    # AND/OR/XOR share one precedence level, left to right: (urgent OR sequence) AND region.
    # e6 (urgent only) would match with SQL-style precedence.
    case(
        "cesql-precedence",
        cesql("EXISTS urgent OR EXISTS sequence AND EXISTS region"),
        "e1 e3 e4 e5 e8",
    ),
    case(
        "cesql-type-narrows-binding",
        cesql("type = 'com.example.order.deleted' AND int(sequence) < 5"),
        "e3",
        "com.example.order.deleted",
    ),
    case(
        "cesql-type-in",
        cesql("type IN ('org.other.thing', 'com.example.user.created')"),
        "e5 e7",
        "com.example.user.created org.other.thing",
    ),
    # spec.filter.attributes and its interplay with spec.filters
    case(
        "filters-override-filter",
        {
            "filter": {"attributes": {"type": "org.other.thing"}},
            "filters": [{"exact": {"type": "com.example.order.deleted"}}],
        },
        "e3 e4",
        "com.example.order.deleted",
    ),
    case(
        "empty-filters-fall-back-to-filter",
        {"filter": {"attributes": {"type": "org.other.thing"}}, "filters": []},
        "e5",
        "org.other.thing",
    ),
    case(
        "attributes-wildcard", {"filter": {"attributes": {"sequence": ""}}}, "e1 e3 e4 e5 e8", "#"
    ),
    case(
        "attributes-type-and-wildcard",
        {"filter": {"attributes": {"type": "com.example.order.created", "region": ""}}},
        "e1",
        "com.example.order.created",
    ),
    case(
        "attributes-extensions",  # e8's urgent is the boolean true, its region eu-south
        {"filter": {"attributes": {"region": "eu-west", "urgent": "true"}}},
        "e1 e5",
        "#",
    ),
]


def manifests(sink: Sink) -> str:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": BROKER}}
    ]
    for c in CASES:
        docs.append(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": c.name},
                "spec": {"broker": BROKER, **c.spec, "subscriber": {"uri": sink.url + c.name}},
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)


def topic_matches(key: str, routing_key: str) -> bool:
    """RabbitMQ topic semantics: `*` is one word, `#` zero or more."""

    def match(pattern: list[str], words: list[str]) -> bool:
        if not pattern:
            return not words
        head, rest = pattern[0], pattern[1:]
        if head == "#":
            return any(match(rest, words[i:]) for i in range(len(words) + 1))
        if not words:
            return False
        return (head == "*" or head == words[0]) and match(rest, words[1:])

    return match(key.split("."), routing_key.split("."))


def queue_bindings(exchange: str) -> dict[str, set[str]]:
    """queue -> binding keys from `exchange`, as RabbitMQ itself reports them."""
    out: dict[str, set[str]] = {}
    columns = ("source_name", "destination_name", "routing_key")
    listing = rabbitmqctl("list_bindings", "-q", "--no-table-headers", *columns)
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == exchange:
            out.setdefault(parts[1], set()).add(parts[2])
    return out


@dataclass
class Outcome:
    received: dict[str, list[str]] = field(default_factory=dict)  # trigger -> ce-ids
    bindings: dict[str, set[str]] = field(default_factory=dict)  # trigger -> binding keys
    routed: dict[str, int] = field(default_factory=dict)  # trigger -> events in its queue
    taken: dict[str, int] = field(default_factory=dict)  # trigger -> delivered + filtered


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def outcome(rabbitmq: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start one mesh with every case's trigger, post EVENTS once, wait until all are taken."""
    prefix = unique_prefix()
    names = Names(prefix)
    sink = await Sink().start()
    config = tmp_path_factory.mktemp("filters-config")
    write_manifests(config, manifests(sink))
    mesh = await InProcessMesh(config, prefix).start()
    try:
        for eid, (type_, ext) in EVENTS.items():
            status, _ = await post_binary(f"{mesh.url}/{NS}/{BROKER}", type_, id_=eid, **ext)
            assert status == 202, f"{eid}: ingress answered {status}"
        status, _ = await post_structured(f"{mesh.url}/{NS}/{BROKER}", TYPED_EVENT)
        assert status == 202, f"e8: ingress answered {status}"
        by_queue = await asyncio.to_thread(queue_bindings, names.broker_exchange(NS, BROKER))
        result = Outcome()
        for c in CASES:
            keys = by_queue.get(names.trigger_queue(NS, c.name), set())
            result.bindings[c.name] = keys
            result.routed[c.name] = sum(any(topic_matches(k, t) for k in keys) for t in TYPES)
        assert mesh.server.ctx is not None
        workers = mesh.server.ctx.workers

        def taken(name: str) -> int:
            stats = workers[names.trigger_queue(NS, name)].stats
            return stats.delivered + stats.filtered

        def pending() -> list[str]:
            return [
                f"{c.name}: {taken(c.name)}/{result.routed[c.name]}"
                for c in CASES
                if taken(c.name) < result.routed[c.name]
            ]

        await eventually(lambda: not pending(), timeout=15, what="every trigger's queue taken")
        result.taken = {c.name: taken(c.name) for c in CASES}
        for c in CASES:
            result.received[c.name] = [
                r.ce_id or "" for r in sink.received if r.path == "/" + c.name
            ]
        yield result
    finally:
        await mesh.stop()
        await sink.stop()


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_trigger_gets_exactly_the_matching_events(outcome: Outcome, c: Case) -> None:
    got = outcome.received[c.name]
    assert sorted(got) == sorted(c.expected), f"{c.name}: {c.spec}"
    assert len(got) == len(set(got)), f"{c.name}: duplicate deliveries {got}"
    # Nothing is still on its way to the sink: every routed event was delivered or filtered.
    assert outcome.taken[c.name] == outcome.routed[c.name]


@pytest.mark.parametrize(
    "c", [c for c in CASES if c.bindings], ids=[c.name for c in CASES if c.bindings]
)
def test_binding_keys_in_rabbitmq(outcome: Outcome, c: Case) -> None:
    """Filters on `type` narrow the queue's bindings; the rest bind `#` and filter in Python."""
    assert tuple(sorted(outcome.bindings[c.name])) == c.bindings


def test_narrowing_keeps_unwanted_events_out_of_the_queue(outcome: Outcome) -> None:
    """RabbitMQ, not the dispatcher, drops other types for a narrowed trigger."""
    assert outcome.routed["exact-type"] == 2
    assert outcome.routed["cesql-type-narrows-binding"] == 2  # both order.deleted events
    assert outcome.routed["prefix-type"] == 4
    assert outcome.routed["no-filter"] == len(TYPES)


# -- invalid filters reject the Trigger -------------------------------------------------------


def trigger_text(spec: str) -> str:
    return broker_and_trigger("http://127.0.0.1:9/", trigger="bad", spec=spec + "\n")


INVALID = [
    pytest.param(
        "  filters: [{exact: {type: a.b}, prefix: {type: a.}}]",
        "spec.filters[0]: exactly one dialect per filter, got 'exact', 'prefix'",
        id="two-dialects",
    ),
    pytest.param(
        '  filters: [{exact: {"": x}}]',
        "spec.filters[0].exact: attribute name must not be empty",
        id="empty-key-in-exact",
    ),
    pytest.param(
        '  filters: [{prefix: {type: ""}}]',
        "spec.filters[0].prefix.type: value must not be empty",
        id="empty-value-in-prefix",
    ),
    pytest.param(
        '  filters: [{cesql: "type = "}]',
        "spec.filters[0].cesql: invalid CESQL expression 'type = ': parse error: at column 8",
        id="cesql-parse-error",
    ),
    pytest.param(
        "  filters:\n"
        "    - exact: {type: a.b}\n"
        "    - all: [{exact: {type: a.b}}, {any: [{not: {cesql: 'int(sequence) >> 5'}}]}]",
        "spec.filters[1].all[1].any[0].not.cesql: invalid CESQL expression "
        "'int(sequence) >> 5': parse error: at column 16",
        id="nested-cesql-parse-error",
    ),
    pytest.param(
        "  filters: [{suffix: {Region: eu}}]",
        "spec.filters[0].suffix.Region: invalid attribute name 'Region'",
        id="bad-key-in-filters",
    ),
    pytest.param(
        "  filter: {attributes: {my-ext: x}}",
        "spec.filter.attributes.my-ext: invalid attribute name 'my-ext'",
        id="bad-key-in-filter-attributes",
    ),
    pytest.param(
        "  filter: {attributes: {type: a.b}}\n  filters: [{any: [{regex: {type: a}}]}]",
        "spec.filters[0].any[0]: unknown dialect 'regex'",
        id="unknown-dialect",
    ),
]


@pytest.mark.parametrize(("spec", "why"), INVALID)
def test_invalid_filter_rejects_the_trigger(spec: str, why: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_text(trigger_text(spec), "bad.yaml")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("bad.yaml: document 2 (Trigger bad): "), line
    assert why in line


async def test_rabbitmesh_run_refuses_an_invalid_filter(tmp_path) -> None:
    """The real process: exit status 1 and one line naming file, document, field and why."""
    path = write_manifests(
        tmp_path, trigger_text('  filters: [{cesql: "type LIKE"}]'), name="triggers.yaml"
    )
    mesh = MeshProcess(tmp_path, unique_prefix())
    with pytest.raises(AssertionError, match="exited with 1"):
        await mesh.start()
    output = mesh.output()
    lines = [line for line in output.splitlines() if "invalid manifest" in line]
    assert lines == [
        f"rabbitmesh: invalid manifest: {path}: document 2 (Trigger bad): spec.filters[0].cesql: "
        "invalid CESQL expression 'type LIKE': parse error: at column 10: LIKE must be followed "
        "by a string literal pattern, found end of input"
    ], output
