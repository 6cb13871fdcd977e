"""Hypothesis strategies of CloudEvents shared by the codec tests (HTTP, AMQP)."""

from __future__ import annotations

from datetime import UTC

from hypothesis import strategies as st

from rabbitmesh.cloudevents import CloudEvent

_FORBIDDEN_CATEGORIES = ("Cc", "Cs", "Cn")
ce_text = st.text(st.characters(blacklist_categories=_FORBIDDEN_CATEGORIES))
ce_nonempty = st.text(st.characters(blacklist_categories=_FORBIDDEN_CATEGORIES), min_size=1)
uri_chars = "abcXYZ019-._~!$&'()*+,;=:@/"
sources = st.one_of(
    st.sampled_from(["/mycontext", "https://example.com/x?y=1#z", "urn:uuid:1234", "1-555"]),
    st.text(st.sampled_from(uri_chars), max_size=30).map(lambda s: "/" + s),
)
times = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z"))
content_types = st.sampled_from(
    [
        "application/octet-stream",
        "text/plain",
        "text/plain; charset=utf-8",
        "image/png",
        "application/xml",
        "application/vnd.apache.thrift.binary",
    ]
)
core = {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
core |= {"schemaurl", "datacontentencoding", "data"}
extension_names = st.from_regex(r"\A[a-z0-9]{1,25}\Z").filter(lambda n: n not in core)
extension_values = st.one_of(ce_text, st.integers(-(2**31), 2**31 - 1), st.booleans())


@st.composite
def events(draw: st.DrawFn, content_type: st.SearchStrategy[str] = content_types) -> CloudEvent:
    """Valid CloudEvents 1.0 and 0.3, with optional attributes, extensions and data."""
    version = draw(st.sampled_from(["1.0", "0.3"]))
    attrs: dict[str, object] = {
        "specversion": version,
        # AMQP carries the id as a short string: at most 255 bytes (validation.py).
        "id": draw(ce_nonempty.filter(lambda s: len(s.encode()) <= 255)),
        "source": draw(sources),
        "type": draw(ce_nonempty),
    }
    optional = {
        "subject": ce_nonempty,
        "time": times,
        "datacontenttype": content_type,
        ("dataschema" if version == "1.0" else "schemaurl"): st.just("https://example.com/s"),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            attrs[name] = draw(strategy)
    attrs.update(draw(st.dictionaries(extension_names, extension_values, max_size=5)))
    data = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=200)))
    return CloudEvent(attrs, data)  # type: ignore[arg-type]
