"""Fuzzing the HTTP ingress of a running mesh (real HTTP, real RabbitMQ).

Random methods, paths, headers, bodies, batches and sizes around RABBITMESH_MAX_EVENT_BYTES
(64 KiB here). The rules: every answer is one of the statuses the contract names for bad
input (never a 5xx: RabbitMQ is up), JSON error bodies carry an "error" string, every
request is answered within a deadline, every event answered with 202 reaches the trigger's
subscriber, and afterwards the server is healthy and still routes a valid event.

Hypothesis drives the requests from a worker thread while the mesh and the aiohttp client
stay on the test's event loop, so the server keeps running between examples.
"""

from __future__ import annotations

import asyncio
import base64
import re
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from rabbitmesh.cloudevents import InvalidEvent, decode_request
from rabbitmesh.cloudevents.percent import percent_encode
from tests.fuzz.conftest import counted, fuzz_settings
from tests.fuzz.strategies import (
    BODIES,
    CONTENT_TYPES,
    JSON_TREES,
    PRINTABLE_TEXT,
    dumps_json,
    header_dicts,
    structured_objects,
    valid_binary_headers,
)
from tests.support.events import binary_headers, post
from tests.support.manifests import broker_and_trigger
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
ALLOWED = {200, 202, 400, 404, 405, 408, 413, 431}
#: Seconds within which every request must be answered (a publish confirm takes ms).
DEADLINE = 10.0

MANIFESTS = broker_and_trigger("SINK")

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the message or the connection: random values would make the client
# or the server wait for bytes that never come, which tests the fuzzer, not the ingress.
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te"}
_ADMIN = ("/apis", "/api/", "/apply")


@dataclass
class Request:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _sendable(headers: dict[str, str], content_type: str | None) -> CIMultiDict[str]:
    """Headers aiohttp's client sends as given: token names, no control characters.

    Names equal but for case are spelled alike, so the client sends each of them (it would
    keep only the last of `ce-id` and `CE-ID`) and the server sees the duplicate.
    """
    if content_type is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = content_type
    out: CIMultiDict[str] = CIMultiDict()
    spelling: dict[str, str] = {}
    for name, value in headers.items():
        if _TOKEN.fullmatch(name) and name.lower() not in _FRAMING:
            out.add(spelling.setdefault(name.lower(), name), _CONTROL.sub("", value))
    return out


def _sized_binary(size: int, fill: bytes) -> tuple[dict[str, str], bytes]:
    return binary_headers(), (fill * (size // len(fill) + 1))[:size]


def _sized_structured(size: int, fill: str) -> tuple[dict[str, str], bytes]:
    event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "fuzz", "type": "big"}
    overhead = len(orjson.dumps({**event, "data": ""}))
    data = (fill * size)[: max(0, size - overhead)]
    return {"content-type": "application/cloudevents+json"}, orjson.dumps({**event, "data": data})


def _sized_batch(count: int, data_size: int) -> tuple[dict[str, str], bytes]:
    items = [
        {
            "specversion": "1.0",
            "id": f"b{i}",
            "source": "fuzz",
            "type": "batch",
            "data": "x" * data_size,
        }
        for i in range(count)
    ]
    return {"content-type": "application/cloudevents-batch+json"}, orjson.dumps(items)


SIZES = st.one_of(
    st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 4096]), st.integers(0, LIMIT + 8192)
)
SIZED = st.one_of(
    st.builds(_sized_binary, SIZES, st.sampled_from([b"x", b"\x00\xff", b'{"a":1}'])),
    st.builds(_sized_structured, SIZES, st.sampled_from(["x", "é", "\\", '"'])),
    st.builds(
        _sized_batch,
        st.one_of(st.integers(0, 20), st.sampled_from([999, 1000, 1001])),
        st.one_of(st.just(0), st.integers(0, 4000)),
    ),
)
HEADERS_AND_BODY = st.one_of(
    st.tuples(header_dicts(), BODIES),
    st.tuples(valid_binary_headers(), BODIES),
    st.tuples(valid_binary_headers(), BODIES),
    SIZED,
    st.tuples(
        st.sampled_from(CONTENT_TYPES[:5]).map(lambda c: {"content-type": c}),
        st.lists(structured_objects(), max_size=3).map(dumps_json),
    ),
    st.tuples(
        st.just({"content-type": "application/cloudevents+json"}),
        structured_objects().map(dumps_json),
    ),
    SIZED,
)
SEGMENT = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "-._~%:@!$&'()*+,;=", max_size=10),
    st.sampled_from(["default", "br", "channels", "sequences", "parallels", "..", ".", "%2F"]),
)
RANDOM_PATHS = st.lists(SEGMENT, max_size=4).map(lambda parts: "/" + "/".join(parts))
PATHS = st.one_of(
    st.just("/default/br"),
    st.just("/default/br"),
    st.sampled_from(
        [
            "/default/br/",
            "/default/br?x=%zz&y",
            "/default/br/extra",
            "/Default/br",
            "/default/nope",
            "/other/br",
            "/channels/default/br",
            "/sequences/default/br",
            "/parallels/default/x",
            "//default//br",
            "/default/%62r",
        ]
    ),
    RANDOM_PATHS,
).map(lambda p: "/x" + p if p.startswith(_ADMIN) else p)
METHODS = st.one_of(
    st.just("POST"),
    st.just("POST"),
    st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW"]),
)
RANDOM_REQUESTS = st.builds(
    lambda method, path, hb, content_type: Request(
        method, path, _sendable(hb[0], content_type), hb[1]
    ),
    METHODS,
    PATHS,
    HEADERS_AND_BODY,
    st.one_of(st.none(), st.none(), st.sampled_from(CONTENT_TYPES), PRINTABLE_TEXT),
)

# Events with odd but legal content: any Unicode in attributes (percent-encoded in binary
# mode), any bytes or JSON as data. Nearly all are accepted, and then must be delivered.
CE_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=20
)
DATA_TYPES = [c for c in CONTENT_TYPES if c and "cloudevents" not in c.lower()]
EXT_NAMES = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8).filter(
    lambda n: (
        n not in ("data", "specversion", "id", "source", "type", "time", "subject")
        and n not in ("dataschema", "datacontenttype", "knativebrokerttl", "knativearrivaltime")
    )
)


def _valid_binary(
    id_: str, source: str, type_: str, ext: dict[str, str], content_type: str | None, body: bytes
) -> Request:
    headers = {"ce-specversion": "1.0", "ce-id": id_, "ce-source": source, "ce-type": type_}
    headers.update({"ce-" + k: v for k, v in ext.items()})
    encoded = {k: percent_encode(v) for k, v in headers.items()}
    if content_type is not None:
        encoded["content-type"] = content_type
    return Request("POST", "/default/br", _sendable(encoded, None), body)


def _valid_structured(events: list[dict[str, Any]], batch: bool) -> Request:
    content_type = "application/cloudevents" + ("-batch" if batch else "") + "+json"
    body = dumps_json(events if batch else events[0])
    return Request("POST", "/default/br", _sendable({"content-type": content_type}, None), body)


VALID_OBJECTS = st.builds(
    lambda id_, source, type_, ext, data: {
        "specversion": "1.0",
        "id": id_,
        "source": source,
        "type": type_,
        **ext,
        **data,
    },
    CE_TEXT,
    CE_TEXT,
    CE_TEXT,
    st.dictionaries(EXT_NAMES, st.one_of(CE_TEXT, st.integers(-(2**31), 2**31 - 1), st.booleans())),
    st.one_of(
        st.just({}),
        st.fixed_dictionaries({"data": JSON_TREES.filter(lambda d: len(dumps_json(d)) < 4096)}),
        st.binary(max_size=100).map(lambda b: {"data_base64": base64.b64encode(b).decode()}),
        st.tuples(st.sampled_from(DATA_TYPES), CE_TEXT).map(
            lambda t: {"datacontenttype": t[0], "data": t[1]}
        ),
    ),
)
VALID_REQUESTS = st.one_of(
    st.builds(
        _valid_binary,
        CE_TEXT,
        CE_TEXT,
        CE_TEXT,
        st.dictionaries(EXT_NAMES, CE_TEXT, max_size=3),
        st.one_of(st.none(), st.sampled_from(DATA_TYPES)),
        st.binary(max_size=300),
    ),
    st.builds(_valid_structured, st.lists(VALID_OBJECTS, min_size=1, max_size=4), st.booleans()),
)
SIZED_REQUESTS = SIZED.map(lambda hb: Request("POST", "/default/br", _sendable(hb[0], None), hb[1]))


def as_received(req: Request) -> CIMultiDict[str]:
    """The request's headers as the server reads them (HTTP strips spaces around values)."""
    return CIMultiDict((name, value.strip(" \t")) for name, value in req.headers.items())


@dataclass
class Outcome:
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)  # ids of events answered with 202
    slowest: float = 0.0


async def _send(session: aiohttp.ClientSession, base: str, req: Request) -> tuple[int, str, bytes]:
    try:
        async with session.request(
            req.method,
            base + req.path,
            headers=req.headers,
            data=req.body,
            skip_auto_headers=["Content-Type"],
            allow_redirects=False,
        ) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()
    except aiohttp.ClientResponseError as e:
        # A request aiohttp's server parser refuses before rabbitmesh sees it (a duplicate
        # Content-Type) is answered 400 with a text body, HEAD or not; aiohttp's client then
        # refuses a body after a HEAD answer ("Data after `Connection: close`") and reports
        # the status it got. The answer was a 400: that is what is checked.
        if req.method == "HEAD" and e.status == 400:
            return e.status, "", b""
        raise


def check_response(req: Request, status: int, content_type: str, body: bytes) -> None:
    assert status in ALLOWED, f"{req.method} {req.path} -> {status} {body[:300]!r}"
    if status >= 300 and content_type.startswith("application/json") and req.method != "HEAD":
        obj = orjson.loads(body)
        assert isinstance(obj, dict) and isinstance(obj.get("error"), str) and obj["error"], obj


@pytest.fixture
async def mesh(start_mesh, make_sink):
    sink = await make_sink()
    m = await start_mesh(MANIFESTS.replace("SINK", sink.url), max_event_bytes=LIMIT)
    m.sink = sink
    return m


async def test_ingress_survives_random_requests(mesh) -> None:
    loop = asyncio.get_running_loop()
    outcome = Outcome()

    async with aiohttp.ClientSession() as session:

        def fuzzer(requests: st.SearchStrategy[Request], share: float) -> Any:
            # Every health check off: the thread, the fixture and the sizes are on purpose.
            @fuzz_settings("ingress", share=share, suppress_health_check=list(HealthCheck))
            @given(req=requests)
            @counted(name="test_ingress_survives_random_requests")
            def fuzz_one_request(req: Request) -> None:
                start = time.monotonic()
                future = asyncio.run_coroutine_threadsafe(_send(session, mesh.url, req), loop)
                try:
                    status, content_type, body = future.result(DEADLINE)
                except TimeoutError:
                    future.cancel()
                    raise AssertionError(
                        f"{req.method} {req.path} not answered within {DEADLINE}s"
                    ) from None
                outcome.slowest = max(outcome.slowest, time.monotonic() - start)
                outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
                check_response(req, status, content_type, body)
                if status == 202:
                    try:
                        events = decode_request(as_received(req), req.body)
                    except (InvalidEvent, UnicodeError):
                        # This test's copy of a header is not what went over the wire (a lone
                        # surrogate is sent escaped): the server's decode is what counted.
                        events = []
                    outcome.accepted.update(e.id for e in events)

            return fuzz_one_request

        # Separate runs, so that each kind of request gets its share of the budget.
        await asyncio.to_thread(fuzzer(RANDOM_REQUESTS, 0.5))
        await asyncio.to_thread(fuzzer(VALID_REQUESTS, 0.3))
        await asyncio.to_thread(fuzzer(SIZED_REQUESTS, 0.2))

    statuses = ", ".join(f"{n} x {code}" for code, n in sorted(outcome.statuses.items()))
    print(f"fuzz: ingress answered {statuses}; slowest {outcome.slowest:.2f}s")

    # Still healthy, nothing accepted was lost, and a valid event still gets through.
    status, _, _ = await post(mesh.url + "/healthz", method="GET")
    assert status == 200
    final = uuid.uuid4().hex
    status, _, body = await post(
        mesh.url + "/default/br", headers=binary_headers(id_=final), body=b"{}"
    )
    assert status == 202, body
    expected = outcome.accepted | {final}
    invalid: list[str] = []

    def delivered() -> set[str]:
        ids = set()
        invalid.clear()
        for r in mesh.sink.received:
            try:
                ids.update(e.id for e in decode_request(r.headers, r.body))
            except InvalidEvent as e:
                invalid.append(f"{e} (headers {dict(r.headers)})")
        return ids

    try:
        await eventually(lambda: expected <= delivered() or invalid, timeout=60, what="delivery")
    finally:
        assert not invalid, f"the subscriber got invalid events: {invalid[:5]}"
    missing = sorted(expected - delivered())
    assert not missing, f"{len(missing)} accepted events never arrived: {missing[:20]}"


@pytest.mark.parametrize("ttl", ["1" * 30, "3000000000", str(2**31)])
async def test_knativebrokerttl_beyond_32_bits(mesh, ttl: str) -> None:
    """knativebrokerttl is a CloudEvents Integer (signed 32-bit): beyond it is a 400 that names
    the extension, never a 5xx, and nothing is published."""
    id_ = uuid.uuid4().hex
    headers = binary_headers(id_=id_, knativebrokerttl=ttl)
    status, _, body = await post(mesh.url + "/default/br", headers=headers, body=b"{}")
    assert status == 400, body
    assert "knativebrokerttl" in orjson.loads(body)["error"]
    # The largest 32-bit value is still fine, and the rejected event never reached the sink.
    ok = uuid.uuid4().hex
    headers = binary_headers(id_=ok, knativebrokerttl=str(2**31 - 1))
    status, _, body = await post(mesh.url + "/default/br", headers=headers, body=b"{}")
    assert status == 202, body
    await eventually(lambda: ok in mesh.sink.ids(), timeout=30, what="the valid event delivered")
    assert id_ not in mesh.sink.ids()
