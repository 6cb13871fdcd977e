"""Hypothesis strategies for hostile CloudEvents input: headers, bodies, content types.

Shared by the codec fuzz tests (pure functions) and the ingress fuzz test (real HTTP). Each
strategy mixes mostly-valid shapes (so that the decoders get past their first checks) with
garbage, since a parser's bugs hide behind the checks random noise never passes.
"""

from __future__ import annotations

import base64
import string
from typing import Any

import orjson
from hypothesis import strategies as st

CORE_NAMES = ["specversion", "id", "source", "type", "subject", "time", "dataschema"]
V03_NAMES = ["schemaurl", "datacontentencoding"]
EXTENSION_NAMES = ["knativebrokerttl", "ext1", "traceparent", "comexampleext", "data", "x"]

CONTENT_TYPES = [
    "application/cloudevents+json",
    "application/cloudevents+json; charset=utf-8",
    "Application/CloudEvents+JSON ; charset=UTF-8",
    "application/cloudevents-batch+json",
    "application/cloudevents-batch+json; charset=utf-8",
    "application/cloudevents+avro",
    "application/cloudevents-batch+xml",
    "application/cloudevents",
    "application/cloudeventsfoo",
    "application/json",
    "application/json; charset=utf-16",
    "application/vnd.example+json",
    "text/plain",
    "text/plain; charset=latin-1",
    "text/plain; charset=utf-16",
    "text/plain; charset=utf-32-be",
    "text/plain; charset=base64",
    "text/plain; charset=zlib",
    "text/plain; charset=nope",
    'text/plain; charset="utf-8"',
    "application/xml",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "image/png",
    ";",
    "/",
    "",
]

SPECVERSIONS = ["1.0", "0.3", "1.0 ", "1", "0.2", "", "1.0\x00"]

# Text with the characters that break codecs: percent escapes (good and bad), quotes,
# backslashes, controls, separators, surrogates, non-characters, astral code points.
_NASTY_CHARS = st.sampled_from(
    list("%\"'\\ \t\r\n\x00\x7f\x85\xa0\xad;,=:/?#[]@!$&()*+")
    + ["%25", "%2", "%zz", "%C3%A9", "%FF", "%ED%A0%80", "%00", '"', '\\"', "\ud800", "\ufffe"]
    + ["\U0001f600", "é", "日本", "\u2028", "\ufdd0", "\U0010ffff"]
)
NASTY_TEXT = st.lists(
    st.one_of(_NASTY_CHARS, st.text(max_size=4), st.characters()), max_size=24
).map("".join)
PRINTABLE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-._~/:", min_size=1)


def long_text(max_size: int = 9000) -> st.SearchStrategy[str]:
    """A long value built from one repeated piece (cheap to generate, long to parse)."""
    return st.tuples(st.one_of(NASTY_TEXT, PRINTABLE_TEXT), st.integers(1, 400)).map(
        lambda t: (t[0] * t[1])[:max_size]
    )


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

HEADER_VALUES = st.one_of(
    PRINTABLE_TEXT,
    NASTY_TEXT.map(lambda t: TRACEPARENT + t),
    NASTY_TEXT,
    long_text(),
    st.sampled_from(["1.0", "0.3", "true", "false", "2018-04-05T17:31:00Z", "255", "0", "-1"]),
    st.integers(-(2**40), 2**70).map(str),
    st.just('"quoted \\" value"'),
    st.sampled_from(CONTENT_TYPES),
)


def _cased(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.title()])


HEADER_NAMES = st.one_of(
    st.sampled_from(CORE_NAMES + V03_NAMES + EXTENSION_NAMES + ["datacontenttype", "", "-"])
    .map(lambda n: "ce-" + n)
    .flatmap(_cased),
    st.text(alphabet=string.ascii_lowercase + string.digits + "-_", max_size=12).map(
        lambda n: "ce-" + n
    ),
    _cased("content-type"),
    st.sampled_from(["traceparent", "tracestate", "x-other", "ce", "ce_", "cloudEvents:id"]),
    st.text(max_size=10),
)


def valid_binary_headers() -> st.SearchStrategy[dict[str, str]]:
    """A valid binary-mode request's headers, to be mutated by the tests."""
    return st.fixed_dictionaries(
        {
            "ce-specversion": st.sampled_from(["1.0", "0.3"]),
            "ce-id": PRINTABLE_TEXT,
            "ce-source": PRINTABLE_TEXT,
            "ce-type": PRINTABLE_TEXT,
        },
        optional={
            "content-type": st.sampled_from(CONTENT_TYPES),
            "ce-subject": HEADER_VALUES,
            "ce-time": st.sampled_from(["2018-04-05T17:31:00Z", "2020-02-30T00:00:00Z", "now"]),
            "ce-ext1": HEADER_VALUES,
            "ce-knativebrokerttl": st.sampled_from(["255", "1", "0", "-3", "x", "1" * 30]),
            "traceparent": st.sampled_from(
                [
                    TRACEPARENT,
                    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                    "zz",
                ]
            ),
            "tracestate": HEADER_VALUES,
        },
    )


def header_dicts() -> st.SearchStrategy[dict[str, str]]:
    """Valid binary headers with random additions, or entirely random headers."""
    random_pairs = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=10)
    return st.one_of(
        st.tuples(valid_binary_headers(), random_pairs).map(lambda t: {**t[0], **t[1]}),
        random_pairs,
    )


# -- JSON bodies ----------------------------------------------------------------------------

HUGE_INTS = st.one_of(
    st.integers(-(2**31) - 10, 2**31 + 10),
    st.integers(-(10**40), 10**40),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**19, 10**300]),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    HUGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    NASTY_TEXT,
    PRINTABLE_TEXT,
)
JSON_TREES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(NASTY_TEXT, st.sampled_from(CORE_NAMES)), children, max_size=5),
    ),
    max_leaves=20,
)
ATTRIBUTE_VALUES = st.one_of(
    PRINTABLE_TEXT,
    NASTY_TEXT,
    HUGE_INTS,
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(PRINTABLE_TEXT, max_size=2),
    st.dictionaries(PRINTABLE_TEXT, PRINTABLE_TEXT, max_size=2),
    st.sampled_from(["2018-04-05T17:31:00Z", "1985-04-12T23:20:50.52Z", "2021-02-29T00:00:00Z"]),
    st.sampled_from(["https://example.com/schema", "urn:x", "not a uri", "%zz", "/rel"]),
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def structured_objects() -> st.SearchStrategy[dict[str, Any]]:
    """A JSON-format event object: mostly valid required members, random everything else."""
    required = st.fixed_dictionaries(
        {
            "specversion": st.one_of(st.sampled_from(["1.0", "0.3"]), ATTRIBUTE_VALUES),
            "id": st.one_of(PRINTABLE_TEXT, ATTRIBUTE_VALUES),
            "source": st.one_of(PRINTABLE_TEXT, ATTRIBUTE_VALUES),
            "type": st.one_of(PRINTABLE_TEXT, ATTRIBUTE_VALUES),
        }
    )
    data_members = st.one_of(
        st.just({}),
        JSON_TREES.map(lambda d: {"data": d}),
        st.binary(max_size=64).map(lambda b: {"data_base64": _b64(b)}),
        st.one_of(NASTY_TEXT, HUGE_INTS, st.none()).map(lambda v: {"data_base64": v}),
        st.tuples(JSON_TREES, st.binary(max_size=8)).map(
            lambda t: {"data": t[0], "data_base64": _b64(t[1])}
        ),
        st.binary(max_size=32).map(lambda b: {"data": _b64(b), "datacontentencoding": "base64"}),
    )
    extras = st.dictionaries(
        st.one_of(
            st.sampled_from(
                CORE_NAMES + V03_NAMES + EXTENSION_NAMES + ["datacontenttype", "Upper", ""]
            ),
            st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8),
            st.text(max_size=6),
        ),
        ATTRIBUTE_VALUES,
        max_size=6,
    )
    content_type = st.one_of(
        st.just({}), st.sampled_from(CONTENT_TYPES).map(lambda c: {"datacontenttype": c})
    )
    return st.tuples(required, extras, content_type, data_members).map(
        lambda t: {**t[0], **t[1], **t[2], **t[3]}
    )


def dumps_json(value: Any) -> bytes:
    """JSON bytes of a generated value; orjson refuses >64-bit integers, the stdlib does not."""
    try:
        return orjson.dumps(value)
    except TypeError:
        import json

        return json.dumps(value).encode("utf-8", "surrogatepass")


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":' + (
        b"[" * depth + b"12345678901234567890" + b"]" * depth + b"}"
    )


def _corrupt(body: bytes, where: int, junk: bytes) -> bytes:
    at = where % (len(body) + 1)
    return body[:at] + junk + body[at:]


BODIES = st.one_of(
    st.binary(max_size=256),
    JSON_TREES.map(dumps_json),
    structured_objects().map(dumps_json),
    st.lists(structured_objects(), max_size=4).map(dumps_json),
    st.lists(st.one_of(structured_objects(), JSON_TREES), max_size=4).map(dumps_json),
    st.tuples(st.integers(1, 6000), st.sampled_from(["list", "dict", "event"])).map(
        lambda t: _nested(*t)
    ),
    st.tuples(
        structured_objects().map(dumps_json),
        st.integers(0, 10_000),
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\ud800", b'"', b"}"]),
    ).map(lambda t: _corrupt(*t)),
    st.just(b""),
)
