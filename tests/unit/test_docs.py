"""Docs true to the code: the generated reference, links, and quoted defaults."""

import re
from pathlib import Path

from rabbitmesh.settings import Settings
from rabbitmesh.settings_doc import render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_reference_is_current():
    assert (DOCS / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `python -m rabbitmesh.settings_doc > "
        "docs/configuration.md`"
    )


# --- every relative link resolves -------------------------------------------------------------

REPO = DOCS.parent
INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s+(\S+)", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text without code blocks and code spans, where `[x](y)` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    text = prose(path.read_text())
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


def test_every_relative_link_in_the_docs_resolves():
    problems = {str(p.relative_to(REPO)): broken_links(p) for p in doc_files() if broken_links(p)}
    assert not problems, problems


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n\n## Second §2\n")
    doc = tmp_path / "b.md"
    doc.write_text(
        "[ok](a.md) [ok](a.md#title-here) [ok](a.md#second-2) [ok](#local) [web](https://x)\n"
        "[gone](missing.md) [bad anchor](a.md#nope) `[code](nowhere.md)`\n\n# Local\n"
    )
    assert broken_links(doc) == [
        "missing.md (no such file)",
        "a.md#nope (no heading #nope in a.md)",
    ]


def test_docs_do_not_point_outside_the_repository():
    """A clone has no ../shared/: the docs must stand alone."""
    for p in doc_files():
        text = p.read_text()
        assert "CONTRACT.md" not in text and "../shared/CONTRACT" not in text, p


# --- every RABBITMESH_* default quoted in the docs is the settings model's ---------------------

_VALUE = r"(?P<v>`[^`]*`|\d[\d.]*(?:\s*(?:MiB|KiB|s)\b)?)"
DEFAULT_QUOTES = (
    # `RABBITMESH_X` (default V) / (default: V)
    re.compile(r"`(?P<name>RABBITMESH_[A-Z0-9_]+)`\s*\(default:?\s+" + _VALUE),
    # `RABBITMESH_X` V   (tables of limits)
    re.compile(r"`(?P<name>RABBITMESH_[A-Z0-9_]+)`[ \t]+" + _VALUE),
    # `RABBITMESH_X`, V by default
    re.compile(r"`(?P<name>RABBITMESH_[A-Z0-9_]+)`,?\s+" + _VALUE + r"\s+by default"),
    # `RABBITMESH_X` defaults to V
    re.compile(r"`(?P<name>RABBITMESH_[A-Z0-9_]+)`\s+defaults\s+to\s+" + _VALUE),
)
UNITS = {"MiB": 1024 * 1024, "KiB": 1024, "s": 1}


def quoted_defaults(text: str) -> list[tuple[str, str]]:
    text = FENCE.sub("", text)
    found = {(m.start(), m["name"], m["v"]) for p in DEFAULT_QUOTES for m in p.finditer(text)}
    return [(name, value) for _, name, value in sorted(found)]


def matches_default(value: str, default: object) -> bool:
    if value.startswith("`"):
        return value.strip("`") == ("" if default is None else str(default))
    number, _, unit = value.partition(" ")
    amount = float(number) * UNITS.get(unit.strip(), 1)
    return isinstance(default, int | float) and float(default) == amount


def test_defaults_quoted_in_the_docs_match_the_settings():
    fields = Settings.model_fields
    checked, wrong = [], []
    for p in doc_files():
        if p.name == "configuration.md":  # generated from the model, checked above
            continue
        for name, value in quoted_defaults(p.read_text()):
            field = name.removeprefix("RABBITMESH_").lower()
            if field not in fields:  # RABBITMESH_SERVER (the CLI's), test-only variables
                continue
            default = fields[field].default
            checked.append(name)
            if not matches_default(value, default):
                wrong.append(
                    f"{p.relative_to(REPO)}: {name} {value}, but the default is {default!r}"
                )
    assert not wrong, wrong
    # The check must keep seeing the quotes it is about (a changed wording would hide them).
    assert {"RABBITMESH_CONCURRENCY", "RABBITMESH_PREFETCH", "RABBITMESH_TOPOLOGY_PREFIX"} <= set(
        checked
    ), checked


def test_the_defaults_check_finds_a_wrong_default():
    text = "`RABBITMESH_CONCURRENCY` (default 256) and `RABBITMESH_MAX_EVENT_BYTES` 4 MiB"
    quotes = quoted_defaults(text)
    assert quotes == [("RABBITMESH_CONCURRENCY", "256"), ("RABBITMESH_MAX_EVENT_BYTES", "4 MiB")]
    fields = Settings.model_fields
    assert not matches_default("256", fields["concurrency"].default)
    assert matches_default("4 MiB", fields["max_event_bytes"].default)


#: "the defaults: retry 10, exponential, PT0.2S (`RABBITMESH_DEFAULT_RETRY`, ...)"
DELIVERY_DEFAULTS = re.compile(
    r"retry (?P<retry>\d+), (?P<policy>\w+), (?P<delay>PT[\d.]+S)\s*\(\s*`RABBITMESH_DEFAULT_RETRY`"
)


def test_delivery_defaults_quoted_in_the_docs_match_the_settings():
    fields = Settings.model_fields
    expected = (
        str(fields["default_retry"].default),
        fields["default_backoff_policy"].default,
        fields["default_backoff_delay"].default,
    )
    quoted = {
        str(p.relative_to(REPO)): m.group("retry", "policy", "delay")
        for p in doc_files()
        for m in DELIVERY_DEFAULTS.finditer(re.sub(r"\s+", " ", p.read_text()))
    }
    assert {"docs/delivery.md", "docs/contract.md"} <= set(quoted), quoted
    assert all(q == expected for q in quoted.values()), (quoted, expected)
