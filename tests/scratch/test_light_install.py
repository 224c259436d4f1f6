"""The light install: `pip install -e '.[scratch]'` (make install-scratch) runs tracks 1-3.

Two checks. Statically, every module scratch/ imports is the standard library's or comes with a
distribution that `mlzero[scratch]` requires (directly or through them). Then each scratch
command really runs with every other installed package made unimportable — torch, transformers,
gradio and the rest of the full environment — as it would in a venv holding only the light set.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRATCH = ROOT / "scratch"
HEAVY = {"torch", "transformers", "tokenizers", "peft", "trl", "gradio", "onnxruntime",
         "xllamacpp", "flwr", "ray", "diffusers", "accelerate", "datasets", "safetensors"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def light_distributions() -> set[str]:
    """mlzero's own requirements with the scratch extra, and everything they require."""
    wanted = []
    for req in metadata.requires("mlzero") or []:
        spec, _, marker = req.partition(";")
        if not marker.strip() or re.search(r"extra\s*==\s*['\"]scratch['\"]", marker):
            wanted.append(canonical(re.match(r"[A-Za-z0-9._-]+", spec).group(0)))
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        wanted += [canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requires
                   if "extra ==" not in r.replace("extra==", "extra ==")]
    return seen


def imported_top_level(folder: Path) -> set[str]:
    """Top-level names of every import in the folder's code, lazy (in-function) ones included."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def outside_the_light_set() -> list[str]:
    """Importable top-level modules that only distributions outside the light set provide."""
    light = light_distributions() | {"pip", "setuptools", "wheel"}  # in every venv
    return sorted(module for module, dists in metadata.packages_distributions().items()
                  if not {canonical(d) for d in dists} & light
                  and canonical(dists[0]) != "mlzero" and module.isidentifier())


def test_the_light_set_leaves_out_the_heavy_packages():
    assert not {canonical(h) for h in HEAVY} & light_distributions()
    assert {"numpy", "numba", "scikit-learn", "matplotlib"} <= light_distributions()


def test_every_scratch_import_comes_with_the_light_install():
    stdlib = set(sys.stdlib_module_names)
    provided = metadata.packages_distributions()
    light = light_distributions()
    missing = {}
    for module in sorted(imported_top_level(SCRATCH) - stdlib - {"scratch"}):
        dists = {canonical(d) for d in provided.get(module, [])}
        if not dists & light:
            missing[module] = sorted(dists) or "not installed"
    assert not missing, f"scratch/ imports these beyond mlzero[scratch]: {missing}"


# Each scratch command, small; one run each with everything else hidden.
COMMANDS = [
    ("scratch.ga", ["--game", "onemax", "--generations", "3", "--population", "16"]),
    ("scratch.life", ["--pattern", "glider", "--size", "16", "--steps", "8"]),
    ("scratch.evoloop", ["--steps", "2", "--size", "40"]),
    ("scratch.soup", ["--programs", "64", "--epochs", "2"]),
    ("scratch.nn", ["--task", "digits-mlp", "--epochs", "1"]),
    ("scratch.federated", ["--clients", "2", "--rounds", "1", "--no-centralized"]),
]

# Runs a module as `python -m` would, with a finder that refuses the hidden modules.
RUNNER = """
import importlib.abc, json, runpy, sys
hidden = set(json.loads(sys.argv[1]))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: light install)")
sys.meta_path.insert(0, Hide())
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:  # the command may end in sys.exit
    print("LOADED:", json.dumps(sorted(m for m in hidden if m in sys.modules)))
"""


@pytest.mark.parametrize("module,argv", COMMANDS, ids=[m for m, _ in COMMANDS])
def test_scratch_command_runs_without_the_full_environment(module: str, argv: list[str],
                                                           tmp_path: Path):
    hidden = outside_the_light_set()
    assert {"torch", "transformers", "gradio"} <= set(hidden)
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(hidden), module, *argv,
                           "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                            "MPLBACKEND": "Agg", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED: []" in proc.stdout
    assert json.loads(out.read_text()), "the command wrote no result"
