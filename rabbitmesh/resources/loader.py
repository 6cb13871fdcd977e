"""Manifests -> validated resources, with errors that name the file, document and field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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

    def __str__(self) -> str:
        where = f"{self.source}: document {self.document}"
        if self.what:
            where += f" ({self.what})"
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"

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


def parse_document(doc: Any, source: str, index: int) -> Resource:
    """Validate one decoded YAML/JSON document into its resource model."""
    if not isinstance(doc, dict):
        raise ManifestError(source, index, "", "", "a manifest must be a mapping")
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    what = f"{kind} {name}" if kind and name else str(kind or "")
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
        err = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise ManifestError(source, index, what, loc_to_path(err["loc"]), msg + more) from None
    try:
        res.check()
    except FieldError as e:
        raise ManifestError(source, index, what, e.path, e.message) from None
    return res


def load_text(text: str, source: str) -> list[Resource]:
    """All resources in a multi-document YAML (or JSON) text; the first error stops loading."""
    try:
        docs = [d for d in yaml.safe_load_all(text)]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError(source, 1, "", "", f"invalid YAML{at}: {problem}") from None
    out: list[Resource] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:  # an empty document between `---` separators
            continue
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            out.extend(parse_document(item, source, i) for item in doc["items"])
            continue
        out.append(parse_document(doc, source, i))
    return out


def manifest_files(directory: Path) -> Iterator[Path]:
    """Manifest files directly in a directory, sorted, hidden ones skipped.

    Not recursive, like `kubectl apply -f DIR`: `config/examples/` is not applied by default.
    """
    for p in sorted(directory.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            yield p


def load_path(path: Path) -> list[Resource]:
    """Resources from a file or the manifest files of a directory."""
    files = [path] if path.is_file() else list(manifest_files(path))
    out: list[Resource] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(str(f), 1, "", "", f"cannot read: {e}") from None
        out.extend(load_text(text, str(f)))
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
