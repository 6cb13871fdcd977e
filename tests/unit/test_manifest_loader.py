"""The manifest loader's libyaml path (issue 13): as strict as the pure-Python loader.

`load_documents` parses with libyaml first and falls back to the pure-Python loader for
anything libyaml's path refuses, so the fallback alone would hide a hole in the fast path's
own guards: these tests call the fast loader directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rabbitmesh.resources import loader
from rabbitmesh.resources.loader import MAX_DEPTH, _BoundedLoader, load_documents

ROOT = Path(__file__).resolve().parents[2]
FAST = loader.FAST_LOADER


def _fast(text: str) -> list[Any]:
    assert FAST is not None
    return list(yaml.load_all(text, Loader=FAST))


def _slow(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=_BoundedLoader))


def _outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", load(text)
    except yaml.YAMLError as e:
        return "error", getattr(e, "problem", None) or str(e)


def test_libyaml_is_used_when_pyyaml_has_it() -> None:
    """The fast path is on wherever PyYAML was built with libyaml (its wheels are): a config
    dir of 5,000 Triggers parsed in pure Python was a third of a cold start."""
    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML has no libyaml")
    assert FAST is not None
    assert issubclass(FAST, yaml.CSafeLoader)


def _nested(shape: str, depth: int) -> str:
    """`depth` levels of collections (and a scalar inside, a level too) of one shape."""
    inner = depth - 1
    if shape == "flow-seq":
        return "[" * inner + "x" + "]" * inner
    if shape == "flow-map":
        return "{a: " * inner + "x" + "}" * inner
    if shape == "block-seq":
        return "- " * inner + "x\n"
    if shape == "block-map":
        return "".join(" " * i + "a:\n" for i in range(inner)) + " " * inner + "x\n"
    if shape == "mixed":  # block mappings, then flow sequences inside
        half = inner // 2
        block = "".join(" " * i + "a:\n" for i in range(half)).rstrip("\n")
        return block + " " + "[" * (inner - half) + "x" + "]" * (inner - half) + "\n"
    raise AssertionError(shape)


SHAPES = ["flow-seq", "flow-map", "block-seq", "block-map", "mixed"]


@pytest.mark.skipif(FAST is None, reason="no libyaml")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2, 600])
def test_the_fast_loader_refuses_nesting_exactly_where_the_python_one_does(
    shape: str, depth: int
) -> None:
    """Up to libyaml's own limit (1,000 levels) only the fast loader's depth check refuses."""
    text = _nested(shape, depth)
    fast, slow = _outcome(_fast, text), _outcome(_slow, text)
    assert fast[0] == slow[0], (fast, slow)
    if depth > MAX_DEPTH:
        assert fast == ("error", f"nested more than {MAX_DEPTH} levels deep")
    else:
        assert fast == slow


def test_an_alias_counts_one_level_where_it_is_used() -> None:
    """As the pure-Python composer counts: what an alias refers to was counted where its
    anchor is, not again under the alias; the alias itself is one level."""
    deep = "[" * (MAX_DEPTH - 3) + "x" + "]" * (MAX_DEPTH - 3)
    cases = [
        (f"a: &d {deep}\nb: [[[*d]]]\n", "ok"),  # 100 levels if the alias were expanded
        ("a: &d x\nb: " + "[" * (MAX_DEPTH - 2) + "*d" + "]" * (MAX_DEPTH - 2) + "\n", "ok"),
        ("a: &d x\nb: " + "[" * (MAX_DEPTH - 1) + "*d" + "]" * (MAX_DEPTH - 1) + "\n", "error"),
    ]
    for text, expected in cases:
        slow = _outcome(_slow, text)
        assert slow[0] == expected, slow
        if FAST is not None:
            assert _outcome(_fast, text) == slow


def _bomb(levels: int) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "bomb:\n" + "".join(f"  {line}\n" for line in lines)


@pytest.mark.skipif(FAST is None, reason="no libyaml")
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_bomb(8), "aliases expand the document by more than"),
        ("a: &x {b: *x}\n", "an alias refers to a node that contains it"),
        ("&r [[[*r]]]\n", "an alias refers to a node that contains it"),
    ],
)
def test_the_fast_loader_refuses_alias_bombs_itself(text: str, problem: str) -> None:
    with pytest.raises(yaml.YAMLError) as raised:
        _fast(text)
    assert problem in str(getattr(raised.value, "problem", raised.value))


@pytest.mark.skipif(FAST is None, reason="no libyaml")
def test_reasonable_aliases_load_alike() -> None:
    text = "sub: &s {uri: 'http://x/'}\ndl: *s\nlist: [*s, *s]\n"
    assert _fast(text) == _slow(text)


def _manifests() -> list[Path]:
    return sorted(
        p
        for pattern in ("config/**/*.yaml", "config/**/*.yml", "deploy/**/*.yaml", "docs/**/*.yaml")
        for p in ROOT.glob(pattern)
    )


@pytest.mark.skipif(FAST is None, reason="no libyaml")
def test_every_manifest_in_the_repository_loads_the_same_either_way() -> None:
    paths = _manifests()
    assert len(paths) > 10
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert _outcome(_fast, text) == _outcome(_slow, text), path


def test_what_libyaml_refuses_gets_the_python_loaders_message() -> None:
    """Errors read as they always did: libyaml's are never shown; the pure-Python loader
    parses again whatever libyaml's path refused and says why."""
    text = "a: [1, 2\nb: 3\n"
    with pytest.raises(yaml.YAMLError) as raised:
        _slow(text)
    expected = raised.value
    with pytest.raises(loader.ManifestError) as got:
        load_documents(text, "m.yaml")
    assert got.value.message == loader._yaml_problem(expected)


def test_the_config_dir_parsed_before_forking_is_what_a_worker_starts_from(tmp_path) -> None:
    """`rabbitmesh run` parses the config dir to fail fast; its workers (forked after) take
    that parse instead of parsing again, only for the same directory, content and checks,
    and only once (later reloads parse what changed)."""
    from rabbitmesh.amqp.names import Names
    from rabbitmesh.config.checks import ManifestChecks
    from rabbitmesh.store import configsync

    (tmp_path / "b.yaml").write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n"
    )
    checks = ManifestChecks(Names("p"))
    configsync.preparse(tmp_path, checks)
    content = configsync.read_dir(tmp_path)
    assert content is not None
    digest, _ = content
    parsed = configsync._take_preparsed(tmp_path, digest, ManifestChecks(Names("p")))
    assert parsed is not None and list(parsed) == [("Broker", "default", "b")]
    assert configsync._take_preparsed(tmp_path, digest, checks) is None  # once

    configsync.preparse(tmp_path, checks)
    assert configsync._take_preparsed(tmp_path, "other", checks) is None  # content changed
    configsync.preparse(tmp_path, checks)
    assert configsync._take_preparsed(tmp_path, digest, ManifestChecks(Names("q"))) is None
    configsync.preparse(tmp_path, checks)
    configsync.forget_preparsed()  # the supervisor, once its workers were forked
    assert configsync._take_preparsed(tmp_path, digest, checks) is None

    (tmp_path / "bad.yaml").write_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\n")
    with pytest.raises(loader.ManifestError):
        configsync.preparse(tmp_path, checks)
