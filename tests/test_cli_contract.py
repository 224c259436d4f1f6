"""One error contract for every command in the repository: bad input prints exactly one line on
stderr, `error: ...; see|run: <a command that works>`, exits with status 2, no traceback.

Entry points are discovered (every module with a `__main__` guard or a package `__main__.py`),
so a new command is covered without being listed here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("training", "serving", "scratch")


def entry_points() -> list[list[str]]:
    """`python` argv prefixes of every command: -m modules, and scripts/*.py."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(ROOT).with_suffix("")
            if path.name == "__main__.py":
                found.append(["-m", ".".join(rel.parent.parts)])
            elif re.search(r'^if __name__ == "__main__":', text, re.M):
                if (path.parent / "__main__.py").exists() and path.stem in ("cli",):
                    continue  # the package's __main__ runs it
                found.append(["-m", ".".join(rel.parts)])
    found += [[str(p.relative_to(ROOT))] for p in sorted((ROOT / "scripts").glob("*.py"))]
    return found


ENTRY_POINTS = entry_points()


def run(argv: list[str], cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_contract(proc: subprocess.CompletedProcess) -> str:
    """The one error line, checked; returns the hinted command."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    line = lines[0]
    assert line.startswith("error: "), line
    match = re.search(r"; (?:see|run): (python .+)$", line)
    assert match, f"no working command in: {line}"
    return match.group(1)


def test_every_package_has_commands():
    names = {" ".join(e) for e in ENTRY_POINTS}
    for expected in ("-m training.finetune", "-m serving.app", "-m scratch.nn", "-m scratch.ga",
                     "-m scratch.life", "-m scratch.soup", "-m scratch.evoloop",
                     "scripts/export_gguf.py", "scripts/export_onnx.py"):
        assert expected in names, sorted(names)


@pytest.fixture(scope="module")
def unknown_flag_runs() -> dict[str, tuple[subprocess.CompletedProcess,
                                           subprocess.CompletedProcess]]:
    """Every command with an unknown flag, and the hint each printed, run (two at a time)."""

    def both(entry: list[str]):
        proc = run([*entry, "--no-such-flag"])
        hint = re.search(r"; (?:see|run): (python .+)$", proc.stderr.strip())
        helped = run(shlex.split(hint.group(1))[1:]) if hint else None
        return " ".join(entry), (proc, helped)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(both, ENTRY_POINTS))


@pytest.mark.parametrize("entry", [" ".join(e) for e in ENTRY_POINTS])
def test_an_unknown_flag_is_one_line_with_a_hint_that_works(entry, unknown_flag_runs):
    proc, helped = unknown_flag_runs[entry]
    hint = assert_contract(proc)
    assert hint.endswith("--help")
    assert helped is not None and helped.returncode == 0 and "usage:" in helped.stdout


@pytest.mark.parametrize("argv,chained", [
    # a model folder that is missing: the hint builds one
    (["-m", "training.evaluate", "--model", "models/nope"], "python -m training.pretrain"),
    (["scripts/export_gguf.py", "models/nope"], "python -m training.pretrain"),
    (["scripts/export_onnx.py", "models/nope"], "python -m training.pretrain"),
    (["-m", "serving.app", "--model", "models/nope"], "python -m training.pretrain"),
    # a fine-tune with no base: the hint names one
    (["-m", "training.finetune", "--out", "models/nope"], "python -m training.pretrain"),
])
def test_a_hint_is_a_command_that_runs(argv, chained, tmp_path):
    """The hinted command gets past its own argument checks: run in an empty folder it stops at
    the next missing input, with its own one-line hint (`chained`), not at its arguments."""
    (tmp_path / "models").mkdir()  # a checkout's layout, without any model built
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    hint = assert_contract(run(argv, cwd=tmp_path))
    assert not hint.endswith("--help"), hint
    follow = run(shlex.split(hint)[1:], cwd=tmp_path)
    next_hint = assert_contract(follow)
    assert next_hint.startswith(chained), follow.stderr
