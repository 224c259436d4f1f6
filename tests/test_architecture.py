"""The layout's rules, checked on the source: imports run one way and never form a cycle.

    scratch/   imports neither training/ nor serving/, and never torch
    serving/   never imports training/ (the app and its image carry serving/ alone)
    training/  may import serving/ (evaluation scores runtimes through the backends)
    scripts/   thin entry points over training/ and serving/

Every import counts, also those inside functions: a lazy import still ties two modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------- the docs' maps of the tree

ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"


def where_table_references() -> list[str]:
    """The `path` and `path:NAME` references of docs/architecture.md's "where new things go"."""
    section = ARCHITECTURE.read_text().split("## Where new things go", 1)[1].split("\n## ")[0]
    refs = re.findall(r"`([\w./-]+/[\w./<>-]*(?::\w+)?)`", section)
    return [r for r in refs if "<" not in r]


def test_the_where_table_names_only_what_exists():
    refs = where_table_references()
    assert len(refs) >= 15, refs
    for ref in refs:
        path, _, name = ref.partition(":")
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
        if name:
            text = (ROOT / path).read_text()
            assert re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]", text, re.M), \
                f"docs/architecture.md names {ref}: {path} defines no {name}"


def layout_lines() -> dict[str, str]:
    """README's layout block: each package's line (continuation lines joined)."""
    block = README.read_text().split("## Layout", 1)[1].split("```")[1]
    lines: dict[str, str] = {}
    last = None
    for line in block.splitlines():
        head = re.match(r"^(\w+)/\s+(.*)$", line)
        if head:
            last = head.group(1)
            lines[last] = head.group(2)
        elif line.startswith(" ") and last:
            lines[last] += " " + line.strip()
    return lines


@pytest.mark.parametrize("package", ["training", "serving", "scratch"])
def test_readme_layout_lists_every_module_of_each_package(package: str):
    listed_text = re.sub(r"\([^)]*\)", "", layout_lines()[package])
    listed = {name.strip() for name in listed_text.split(",") if name.strip()}
    folder = ROOT / package
    present = {p.stem for p in folder.glob("*.py") if p.name != "__init__.py"}
    present |= {p.name + "/" for p in folder.iterdir() if (p / "__init__.py").exists()}
    assert listed == present, f"README's layout for {package}/: missing " \
                              f"{sorted(present - listed)}, not there {sorted(listed - present)}"
