"""The package's imports point down the layers of docs/architecture.md ("Layers") and form
no cycle.

Every `import` in every module counts, also those inside functions and under
TYPE_CHECKING: an import placed there to dodge a cycle is still the dependency. The layer
order is read from the docs, so the docs and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rabbitmesh"
DOC = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Top-level module or package -> its layer (0 lowest), from docs/architecture.md."""
    text = DOC.read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"(\d+)\. ((?:`[\w.]+`(?:, )?)+)", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                out[name.removeprefix("rabbitmesh.")] = int(m.group(1))
    assert out, f"no layer list under '## Layers' in {DOC}"
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The rabbitmesh modules `name` imports (a `from pkg import sub` names the submodule)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "rabbitmesh")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] != "rabbitmesh":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in modules else source)
    return {m for m in out if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports(path, name, modules) for name, path in modules.items()}


def unit(module: str) -> str:
    """The layered unit: `rabbitmesh.dispatch.worker` -> `dispatch`."""
    return module.split(".")[1] if "." in module else module


def test_every_module_has_a_layer() -> None:
    known = layers()
    missing = sorted({unit(m) for m in all_modules() if m != "rabbitmesh"} - set(known))
    assert not missing, (
        f"not in the layer list of {DOC.name} ('## Layers'): {missing}; add each where it "
        "belongs (below everything that imports it, above everything it imports)"
    )


def test_no_import_points_up() -> None:
    known = layers()
    upward = []
    for module, targets in graph().items():
        if module == "rabbitmesh":
            continue
        for target in targets:
            if target == "rabbitmesh":
                continue
            src, dst = unit(module), unit(target)
            if src != dst and known.get(dst, -1) > known.get(src, -1):
                upward.append(
                    f"{module} (layer {known.get(src)}) imports {target} (layer {known.get(dst)})"
                )
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state[nxt] == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state[nxt] == 0:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if state[start] == 0:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of design.
    for name in edges:
        edges[name] = {t for t in edges[name] if not (name.startswith(t + ".") and t != name)}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The walker itself: a made-up graph with a cycle is caught."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    here = graph()
    assert "rabbitmesh.dataplane" in here["rabbitmesh.ingress.handlers"]
    assert "rabbitmesh.metrics" in here["rabbitmesh.dispatch.worker"]  # `from rabbitmesh import`
