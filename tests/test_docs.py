"""The docs' quick commands keep working: every fenced block in docs/ (and README.md) whose info
string is `bash quick` is run, one command per line, and each must exit 0.

Mark a block quick only when its commands run in seconds on a fresh clone with no trained model
(`--help`, small scratch runs). GitHub highlights it as bash (the first word of the info string).
A line ending in `\\` continues on the next; blank lines and `#` comment lines are skipped. The
commands run in an empty folder (with `scripts/` linked in, for `python scripts/...`), where
`python` is the interpreter running the tests and the checkout is on PYTHONPATH, so whatever a
command writes lands in that folder, not in the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MARKER = "bash quick"
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(.*?)\s*$")


def blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(line number of the opening fence, info string, body lines) of every fenced block."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info, start = opening.group(1), opening.group(2), i + 1
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        found.append((start, info, lines[start:i]))
        i += 1
    return found


def commands(body: list[str]) -> list[str]:
    """The commands of a block: `\\` joins lines; blank and `#` comment lines are skipped."""
    out, pending = [], ""
    for line in body:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        out.append(pending + line.strip())
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


def quick_commands() -> list[tuple[str, str]]:
    """(where, command) for every command in a quick block of docs/*.md and README.md."""
    found = []
    for md in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for line, info, body in blocks(md.read_text(encoding="utf-8")):
            if info == MARKER:
                where = f"{md.relative_to(ROOT)}:{line}"
                found += [(where, command) for command in commands(body)]
    return found


QUICK = quick_commands()


def run_command(command: str, folder: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run one docs command as a reader would, from an empty folder beside a checkout."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    if not (folder / "scripts").exists():
        (folder / "scripts").symlink_to(ROOT / "scripts")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    return subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_parser_finds_marked_blocks_and_joins_continued_lines():
    text = "\n".join([
        "```bash quick", "# a comment", "python -m a --x 1 \\", "    --y 2", "", "python -m b",
        "```", "```bash", "python -m slow", "```", "~~~bash quick", "python -m c", "~~~",
    ])
    marked = [commands(body) for _, info, body in blocks(text) if info == MARKER]
    assert marked == [["python -m a --x 1 --y 2", "python -m b"], ["python -m c"]]


def test_the_docs_mark_quick_commands_in_several_pages():
    pages = {where.split(":")[0] for where, _ in QUICK}
    assert len(QUICK) >= 8, QUICK
    assert {"docs/ca.md", "docs/training.md", "docs/export.md", "docs/deploy.md"} <= pages, pages


def test_a_failing_command_is_reported(tmp_path):
    """The runner sees a command's failure (so a broken docs command fails its test)."""
    bad = run_command("python -m scratch.life --pattern glider --size 0 --steps 1 --json o.json",
                      tmp_path)
    assert bad.returncode == 2 and "error: " in bad.stderr
    good = run_command("python -c 'import scratch, sys; print(sys.executable)'", tmp_path)
    assert good.returncode == 0 and good.stdout.strip() == sys.executable


@pytest.mark.parametrize("where,command", QUICK, ids=[f"{w} {c[:60]}" for w, c in QUICK])
def test_a_quick_docs_command_runs(where, command, tmp_path):
    proc = run_command(command, tmp_path)
    assert proc.returncode == 0, f"{where}: {command}\n{proc.stderr[-3000:]}"
