"""validate(): the CloudEvents 1.0.2 / 0.3 rules every decoder ends with."""

from __future__ import annotations

import pytest

from rabbitmesh.cloudevents import InvalidEvent, validate
from rabbitmesh.cloudevents.validation import is_rfc3339, is_uri, is_uri_reference


def v10(**extra: object) -> dict[str, object]:
    attrs: dict[str, object] = {
        "specversion": "1.0",
        "id": "A234-1234-1234",
        "source": "/mycontext",
        "type": "com.example.someevent",
    }
    attrs.update(extra)
    return attrs


def v03(**extra: object) -> dict[str, object]:
    return v10(specversion="0.3", **extra)


def rejects(attrs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate(attrs)
    assert str(info.value) == message


def test_minimal_events_are_valid() -> None:
    validate(v10())
    validate(v03())


def test_full_10_event_is_valid() -> None:
    validate(
        v10(
            time="2018-04-05T17:31:00Z",
            subject="123",
            datacontenttype="application/json",
            dataschema="https://example.com/schema.json",
            comexampleextension1="value",
            comexampleothervalue=5,
            flag=True,
        )
    )


def test_full_03_event_is_valid() -> None:
    validate(
        v03(
            time="2018-04-05T17:31:00Z",
            subject="123",
            datacontenttype="application/json",
            datacontentencoding="base64",
            schemaurl="/schemas/v1",  # a URI-reference in 0.3
        )
    )


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_required_attribute_missing(name: str) -> None:
    attrs = v10()
    del attrs[name]
    rejects(attrs, f"attribute {name!r} is missing")


def test_specversion_missing() -> None:
    attrs = v10()
    del attrs["specversion"]
    rejects(attrs, "attribute 'specversion' is missing")


@pytest.mark.parametrize("version", ["2.0", "1", "0.2", "1.0.2", ""])
def test_unknown_specversion(version: str) -> None:
    rejects(v10(specversion=version), f"unknown specversion {version!r}")


def test_specversion_must_be_a_string() -> None:
    rejects(v10(specversion=1), "attribute 'specversion' must be a string, not int")


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "datacontenttype"])
def test_empty_strings_rejected(name: str) -> None:
    rejects(v10(**{name: ""}), f"attribute {name!r} must not be empty")


def test_empty_dataschema_rejected() -> None:
    rejects(v10(dataschema=""), "attribute 'dataschema' must not be empty")
    rejects(v03(schemaurl=""), "attribute 'schemaurl' must not be empty")


@pytest.mark.parametrize(
    ("name", "value", "type_name"),
    [("id", 5, "int"), ("type", True, "bool"), ("subject", None, "null"), ("time", 1.5, "float")],
)
def test_core_attributes_must_be_strings(name: str, value: object, type_name: str) -> None:
    rejects(v10(**{name: value}), f"attribute {name!r} must be a string, not {type_name}")


@pytest.mark.parametrize(
    "source",
    [
        "/mycontext",
        "/mycontext/subcontext",
        "https://github.com/cloudevents",
        "mailto:cncf-wg-serverless@lists.cncf.io",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "/cloudevents/spec/pull/123",
        "/sensors/tn-1234567/alerts",
        "1-555-123-4567",
        "/apis/v1/namespaces/default/pingsources/ping",
        "http://[::1]:8080/x?a=b&c=%20#frag",
        "relative/path",
        "?query-only",
        "#fragment-only",
        ".",
    ],
)
def test_valid_sources(source: str) -> None:
    validate(v10(source=source))
    assert is_uri_reference(source)


@pytest.mark.parametrize("source", ["/bad%zz", "/bad%2", "%"])
def test_invalid_sources(source: str) -> None:
    rejects(v10(source=source), f"attribute 'source' has a malformed %-escape: {source!r}")


@pytest.mark.parametrize("source", ["my source", "/a b", "/<tag>", "/caf\u00e9", "1:2"])
def test_sources_knative_accepts_are_accepted(source: str) -> None:
    """Stricter than Knative's Go SDK would turn events Knative takes into 400s."""
    validate(v10(source=source))
    assert not is_uri_reference(source)  # still not strict RFC 3986, on purpose


def test_dataschema_must_be_absolute() -> None:
    validate(v10(dataschema="https://example.com/schema.json#/definitions/x"))
    validate(v10(dataschema="urn:example:schema"))
    rejects(
        v10(dataschema="/relative"), "attribute 'dataschema' is not an absolute URI: '/relative'"
    )
    assert not is_uri("//host/path")


@pytest.mark.parametrize(
    "time",
    [
        "2018-04-05T17:31:00Z",
        "2018-04-05t17:31:00z",
        "2018-04-05T17:31:00.123456789Z",
        "2018-04-05T17:31:00+01:00",
        "2018-04-05T17:31:00-08:30",
        "2020-02-29T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "2016-12-31T23:59:60Z",
        "0001-01-31T23:59:59Z",
    ],
)
def test_valid_times(time: str) -> None:
    validate(v10(time=time))
    assert is_rfc3339(time)


@pytest.mark.parametrize(
    "time",
    [
        "2018-04-05",
        "2018-04-05T17:31Z",
        "2018-04-05T17:31:00",
        "2018-04-05 17:31:00Z",
        "2018-04-05T17:31:00+0100",
        "2018-04-05T17:31:00.Z",
        "2018-13-05T17:31:00Z",
        "2018-00-05T17:31:00Z",
        "2018-04-31T17:31:00Z",
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2018-04-05T24:00:00Z",
        "2018-04-05T17:60:00Z",
        "2018-04-05T17:31:61Z",
        "2018-04-05T17:31:00+24:00",
        "18-04-05T17:31:00Z",
        "2018-04-05T17:31:00Z ",
        "\uff12018-04-05T17:31:00Z",
        "",
    ],
)
def test_invalid_times(time: str) -> None:
    rejects(v10(time=time), f"attribute 'time' is not an RFC 3339 timestamp: {time!r}")


@pytest.mark.parametrize("name", ["abc", "123", "comexampleextension1", "a" * 21, "x" * 250])
def test_valid_extension_names(name: str) -> None:
    validate(v10(**{name: "v"}))


@pytest.mark.parametrize(
    "name", ["Foo_Bar", "a-b", "a_b", "ABC", "", "\u00fcber", "a b", "a\u0661"]
)
def test_invalid_extension_names(name: str) -> None:
    rejects(v10(**{name: "v"}), f"extension name {name!r} must be lowercase letters and digits")


def test_extension_name_too_long() -> None:
    with pytest.raises(InvalidEvent, match="is longer than 250 characters"):
        validate(v10(**{"x" * 251: "v"}))


def test_data_is_a_reserved_name() -> None:
    for _ in range(2):  # the valid-name cache must not let it through the second time
        rejects(v10(data="x"), "attribute name 'data' is reserved")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(1.5, "float"), (None, "null"), ([1], "array"), ({"a": 1}, "object"), (b"x", "bytes")],
)
def test_extension_value_types(value: object, type_name: str) -> None:
    rejects(
        v10(ext=value), f"attribute 'ext' must be a string, integer or boolean, not {type_name}"
    )


def test_extension_integer_range() -> None:
    validate(v10(low=-(2**31), high=2**31 - 1, yes=True, no=False, empty=""))
    rejects(
        v10(big=2**31), "attribute 'big': integer 2147483648 is outside the signed 32-bit range"
    )
    with pytest.raises(InvalidEvent, match="'small': integer -2147483649 is outside"):
        validate(v10(small=-(2**31) - 1))


@pytest.mark.parametrize(
    ("char", "code"),
    [("\n", "000A"), ("\x00", "0000"), ("\x7f", "007F"), ("\x85", "0085"), ("\ufffe", "FFFE")],
)
def test_forbidden_characters_in_strings(char: str, code: str) -> None:
    rejects(
        v10(subject=f"a{char}b"),
        f"attribute 'subject' contains U+{code}, which CloudEvents strings do not allow",
    )
    with pytest.raises(InvalidEvent, match=f"attribute 'ext' contains U\\+{code}"):
        validate(v10(ext=f"x{char}"))


def test_noncharacters_and_surrogates_rejected() -> None:
    with pytest.raises(InvalidEvent, match="U\\+1FFFF"):
        validate(v10(subject="a\U0001ffff"))
    with pytest.raises(InvalidEvent, match="U\\+FDD0"):
        validate(v10(ext="\ufdd0"))
    with pytest.raises(InvalidEvent, match="U\\+D800"):
        validate(v10(id="\ud800"))


def test_unusual_but_allowed_characters() -> None:
    # no-break space, zero-width joiner in an emoji sequence, tab-free unicode text
    validate(v10(subject="a\u00a0b", ext="\U0001f469\u200d\U0001f4bb", id="Euro \u20ac \U0001f600"))


def test_datacontentencoding_in_03_must_be_base64() -> None:
    rejects(
        v03(datacontentencoding="gzip"),
        "attribute 'datacontentencoding' must be 'base64', got 'gzip'",
    )


def test_other_versions_core_attributes_are_extensions() -> None:
    # schemaurl is an ordinary extension in 1.0, dataschema one in 0.3
    validate(v10(schemaurl="not checked as a uri", datacontentencoding="anything"))
    validate(v03(dataschema="not checked as a uri"))
