"""The layout's rules, checked on the source: imports run one way and never form a cycle.

    scratch/   imports neither training/ nor serving/, and never torch
    serving/   never imports training/ (the app and its image carry serving/ alone)
    training/  may import serving/ (evaluation scores runtimes through the backends)
    scripts/   thin entry points over training/ and serving/

Every import counts, also those inside functions: a lazy import still ties two modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("training", "serving", "scratch")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    found.update({f"scripts.{p.stem}": p for p in (ROOT / "scripts").glob("*.py")})
    return found


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules (and third-party top-level names) that `path` imports anywhere."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: {m for m in imports_of(path, name, known) if m in known and m != name}
            for name, path in modules.items()}


def third_party(name: str) -> set[str]:
    modules = project_modules()
    return {m.split(".")[0] for m in imports_of(modules[name], name, set(modules))}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_imports_run_one_way():
    for name, deps in graph().items():
        top = {d.split(".")[0] for d in deps}
        if name.startswith("scratch"):
            assert not top & {"training", "serving"}, (name, deps)
            assert "torch" not in third_party(name), name
        if name.startswith("serving"):
            assert "training" not in top, (name, deps)


def test_each_runtime_is_its_own_module_behind_the_registry():
    from serving.runtimes import REGISTRY

    edges = graph()
    for module, _cls in REGISTRY.values():
        assert "serving.backend" in edges[module]
        assert "serving.runtimes" not in edges[module]  # runtimes never import the registry
