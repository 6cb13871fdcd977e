"""Manifests -> validated resources, with errors that name the file, document and field."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rabbitmesh.resources import kinds  # noqa: F401  (registers every kind)
from rabbitmesh.resources.base import FieldError, Resource
from rabbitmesh.resources.registry import all_kinds, lookup

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ManifestError(ValueError):
    """One invalid document. `str()` is the one line users see."""

    source: str  # file path, or "request"
    document: int  # 1-based index of the document in the file
    what: str  # "Trigger default/tr1", or "" when not known yet
    field: str  # "spec.subscriber.uri", or "" for the whole document
    message: str
    #: Every (field, message) found, the first being `field`/`message` (the admin API's 422).
    details: list[tuple[str, str]] = dataclass_field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.source}: document {self.document}"
        if self.what:
            where += f" ({self.what})"
        return one_line(f"{where}: {self.field + ': ' if self.field else ''}{self.message}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "document": self.document,
            "resource": self.what or None,
            "field": self.field or None,
            "message": self.message,
        }


def loc_to_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


#: A check that needs more than the manifest (the topology prefix, say); raises FieldError.
ExtraCheck = Callable[[Resource], None]


def parse_document(doc: Any, source: str, index: int, extra: ExtraCheck | None = None) -> Resource:
    """Validate one decoded YAML/JSON document into its resource model."""
    if not isinstance(doc, dict):
        raise ManifestError(source, index, "", "", "a manifest must be a mapping")
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    # Only strings, shortened: a kind or name of any other type is a field error below, and
    # str() of a large value (an alias bomb, say) must not end up in the message.
    kind_text = _short(kind) if isinstance(kind, str) else ""
    name_text = _short(name) if isinstance(name, str) else ""
    what = f"{kind_text} {name_text}" if kind_text and name_text else kind_text
    if not isinstance(api_version, str) or not api_version:
        raise ManifestError(source, index, what, "apiVersion", "is required")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(source, index, what, "kind", "is required")
    info = lookup(api_version, kind)
    if info is None:
        known = sorted({f"{k.kind} ({', '.join(k.api_versions())})" for k in all_kinds()})
        raise ManifestError(
            source,
            index,
            what,
            "kind",
            f"unknown kind {kind!r} in {api_version!r}; known: {'; '.join(known)}",
        )
    try:
        res = info.model.model_validate(doc)
    except ValidationError as e:
        errors = [(loc_to_path(err["loc"]), _describe(info.model, err)) for err in e.errors()]
        # Every error in the one line, not "(and 2 more)": the one left out is often the
        # typo that caused the others (`subscribr:` makes `subscriber` missing).
        path, msg = errors[0]
        rest = "".join(f"; {p + ': ' if p else ''}{m}" for p, m in errors[1:])
        raise ManifestError(source, index, what, path, msg + rest, errors) from None
    try:
        res.check()
        if extra is not None:
            extra(res)
    except FieldError as e:
        raise ManifestError(source, index, what, e.path, e.message) from None
    return res


def _describe(model: type[BaseModel], err: Any) -> str:
    """Pydantic's message for one error; an unknown field says which known one is close."""
    if err["type"] != "extra_forbidden":
        return str(err["msg"]).removeprefix("Value error, ")
    *parent, name = err["loc"]
    known = _field_names(model, parent)
    close = difflib.get_close_matches(str(name), known, n=1) if known else []
    return "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")


def _field_names(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """The field names (as written in manifests) of the model found at `loc` under `model`;
    [] when the path leads somewhere that is not a model (a dict, a union of models)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, list_item=isinstance(part, int))
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        fields.update(current.model_fields)
        if part not in fields:
            return []
        current = fields[part].annotation
    current = _unwrap(current, list_item=False)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _unwrap(tp: Any, list_item: bool) -> Any:
    """`X | None` -> X, `Annotated[X, ...]` -> X, and `list[X]` -> X for a list index."""
    while True:
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if origin is typing.Annotated:
            tp = args[0]
        elif origin in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
        elif list_item and origin in (list, tuple) and args:
            tp, list_item = args[0], False
        else:
            return tp


#: Deepest nesting of mappings and sequences a manifest may have (Knative's are under 20).
MAX_DEPTH = 100
#: How many nodes YAML aliases may add to a document when expanded. A few hundred bytes of
#: nested aliases can stand for billions of nodes ("billion laughs"): PyYAML shares them,
#: but validation, error messages and the API's JSON would each expand them.
MAX_ALIAS_NODES = 100_000


class _TooComplex(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _Guarded:
    """What both loaders below add to PyYAML's safe loading: the alias check before a
    document is built, and constructor errors as YAML errors.

    Scalars PyYAML resolves but cannot build (an integer of 5000 digits, `!!int ''`,
    `!!bool x`) become YAML errors with their position instead of the stray ValueError,
    IndexError, KeyError or AttributeError its constructors raise.
    """

    def construct_document(self, node: Any) -> Any:
        self._check(node)
        return super().construct_document(node)  # type: ignore[misc]

    def _check(self, node: yaml.Node) -> None:
        _check_aliases(node)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, OverflowError, LookupError, AttributeError, TypeError) as e:
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            problem = f"{_short(str(value))!r} is not a valid {node.tag.rsplit(':', 1)[-1]}"
            if isinstance(e, ValueError | OverflowError) and str(e):
                problem += f" ({e})"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


class _BoundedLoader(_Guarded, yaml.SafeLoader):
    """yaml.SafeLoader with limits on nesting depth (counted while composing) and alias
    expansion. Pure Python: the reference for every error message, and the fallback."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooComplex(
                    f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 (PyYAML's)
        # The scanner reads ahead while a simple key is possible, and checks every flow
        # level's possible key on each token: 1,000 `[` on one line cost ~0.6 s before the
        # composer got to count depth 101. Stop at the same depth here, with its message.
        if self.flow_level >= MAX_DEPTH:
            raise _TooComplex(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


_CSafeLoader: type | None = getattr(yaml, "CSafeLoader", None)


class _FastLoader(_Guarded, _CSafeLoader or yaml.SafeLoader):  # type: ignore[misc]
    """The same limits on libyaml's parser (PyYAML's CSafeLoader), ten to twenty times
    faster: parsing a config dir of 5,000 Triggers with the pure-Python loader was a third
    of a cold start (issue 13). libyaml composes the whole document in C, where
    compose_node cannot be overridden, so the depth is checked on the composed nodes
    (`_check_depth`) before anything is built from them. Composing is recursive C code:
    this loader is used only where libyaml itself refuses deep nesting (a probe,
    `_libyaml_bounds_nesting`), so no document can exhaust the C stack; elsewhere the pure
    Python loader does all the work."""

    def _check(self, node: yaml.Node) -> None:
        if _check_depth(node):  # some node is used twice: there are aliases to check
            _check_aliases(node)


#: Nesting the probe tries: past libyaml's own limit (1,000 levels, flow and block together,
#: in the libyaml PyYAML ships with), yet shallow enough to compose safely where it has none.
PROBE_DEPTH = 1500


def _libyaml_bounds_nesting() -> bool:
    """Whether libyaml refuses deep nesting by itself: a flow sequence nested PROBE_DEPTH
    levels deep must be a YAML error, not a (C-recursive) success."""
    if _CSafeLoader is None:
        return False
    try:
        yaml.load("[" * PROBE_DEPTH + "]" * PROBE_DEPTH, Loader=_CSafeLoader)
    except yaml.YAMLError:
        return True
    except Exception:
        return False
    return False


#: The loader tried first; the pure-Python one gives every error (same messages as ever).
FAST_LOADER: type | None = _FastLoader if _libyaml_bounds_nesting() else None


# Kubernetes reads manifests as JSON (sigs.k8s.io/yaml), and so must we: a date or time
# stays the text written (`2024-01-01` is a string, not a date a string field rejects),
# `!!binary` stays its base64 text and a `!!set` is a mapping to nulls. Python-only values
# would also break the JSON every resource is stored and served as.
_N = TypeVar("_N", bound=yaml.Node)


def _scalar_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(_expect(node, yaml.ScalarNode)))


def _base64_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return "".join(str(loader.construct_scalar(_expect(node, yaml.ScalarNode))).split())


def _set_as_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    data.update(loader.construct_mapping(_expect(node, yaml.MappingNode)))


def _expect(node: yaml.Node, kind: type[_N]) -> _N:
    """The node, if it is of the kind its tag needs (`!!set` a mapping, the others a
    scalar); else the error PyYAML itself gives for such a node."""
    if not isinstance(node, kind):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"expected a {kind.__name__}, but found a {type(node).__name__}",
            node.start_mark,
        )
    return node


for _loader in (_BoundedLoader, _FastLoader):
    _loader.add_constructor("tag:yaml.org,2002:timestamp", _scalar_text)
    _loader.add_constructor("tag:yaml.org,2002:binary", _base64_text)
    _loader.add_constructor("tag:yaml.org,2002:set", _set_as_mapping)


def _check_depth(root: yaml.Node) -> bool:
    """Reject a composed document nested more than MAX_DEPTH levels, counted as the pure
    Python loader counts while composing: every node is a level (a scalar too), and an alias
    is one level where it is used (what it refers to was counted where it was defined).
    True when some node is reached twice (through an alias)."""
    seen: set[int] = set()
    shared = False
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _TooComplex(f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        if id(node) in seen:
            shared = True
            continue
        seen.add(id(node))
        # Reversed: children are taken in document order, so a node is first reached where
        # it is defined (an anchor), before any alias to it.
        stack.extend((child, depth + 1) for child in reversed(_children(node)))
    return shared


def _check_aliases(root: yaml.Node) -> None:
    """Reject a document whose aliases are recursive or expand to too many nodes."""
    expanded: dict[int, int] = {}  # id(node) -> node count with every alias expanded
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            entered.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in children)
            continue
        if key in expanded:
            continue
        if key in entered:
            raise _TooComplex("an alias refers to a node that contains it", node.start_mark)
        entered.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    added = expanded[id(root)] - len(expanded)
    if added > MAX_ALIAS_NODES:
        raise _TooComplex(
            f"aliases expand the document by more than {MAX_ALIAS_NODES} nodes",
            root.start_mark,
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        character = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        return f"invalid YAML at position {e.position}: character {character}: {e.reason}"
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return f"invalid YAML{at}: {problem}"


def load_documents(text: str, source: str) -> list[Any]:
    """The documents of a YAML (or JSON) text, as JSON-compatible values, within the limits
    above; raises ManifestError. Whatever parses manifests should come through here.

    libyaml first (FAST_LOADER); whatever it refuses, for any reason, is parsed again by the
    pure-Python loader, which either refuses it with the message it always gave or loads it
    (the two parsers disagree on a few corner cases: a manifest that loaded before still
    does)."""
    if FAST_LOADER is not None:
        try:
            return list(yaml.load_all(text, Loader=FAST_LOADER))
        except (yaml.YAMLError, RecursionError, ValueError, OverflowError, LookupError, TypeError):
            pass
    try:
        return list(yaml.load_all(text, Loader=_BoundedLoader))
    except yaml.YAMLError as e:
        raise ManifestError(source, 1, "", "", _yaml_problem(e)) from None
    except RecursionError:  # e.g. a long chain of `<<` merges; depth is bounded above
        raise ManifestError(source, 1, "", "", "invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError, LookupError, TypeError) as e:
        # PyYAML's scanner, e.g. ValueError for the escape "\U00110000" (beyond Unicode).
        raise ManifestError(source, 1, "", "", f"invalid YAML: {e}") from None


def load_text(text: str, source: str, extra: ExtraCheck | None = None) -> list[Resource]:
    """All resources in a multi-document YAML (or JSON) text; the first error stops loading."""
    docs = load_documents(text, source)
    out: list[Resource] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:  # an empty document between `---` separators
            continue
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            out.extend(parse_document(item, source, i, extra) for item in doc["items"])
            continue
        out.append(parse_document(doc, source, i, extra))
    return out


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (`\\n`)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def manifest_files(directory: Path) -> Iterator[Path]:
    """Manifest files directly in a directory, sorted, hidden ones skipped.

    Not recursive, like `kubectl apply -f DIR`: `config/examples/` is not applied by default.
    """
    for p in sorted(directory.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            yield p


def load_path(path: Path, extra: ExtraCheck | None = None) -> list[Resource]:
    """Resources from a file or the manifest files of a directory."""
    files = [path] if path.is_file() else list(manifest_files(path))
    out: list[Resource] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(str(f), 1, "", "", f"cannot read: {e}") from None
        out.extend(load_text(text, str(f), extra))
    check_duplicates(out)
    return out


def check_duplicates(resources: list[Resource]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        if r.key in seen:
            raise ManifestError(
                "manifests",
                1,
                f"{r.KIND} {r.namespace}/{r.name}",
                "metadata.name",
                "defined more than once",
            )
        seen.add(r.key)
