"""The contract every scratch command follows (scratch/helpers.py): bad input is one line on
stderr, `error: ...; see: <working command>`, exit 2, no traceback; huge sizes are refused
before allocating; every file written is atomic and gets the umask's mode (0644 under 022)."""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scratch import helpers
from scratch.ca import evoloop, life, soup
from scratch.ga import cli as ga_cli
from scratch.nn import cli as nn_cli

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^error: \S.*; see: (python -m scratch\.[a-z.]+ --[a-z-]+)$")
COMMANDS = {  # command -> its main(argv)
    "python -m scratch.life": life.main,
    "python -m scratch.evoloop": evoloop.main,
    "python -m scratch.soup": soup.main,
    "python -m scratch.ga": ga_cli.main,
    "python -m scratch.nn": nn_cli.main,
}


def run_in_process(capsys, prog: str, argv: list[str]) -> tuple[int, str]:
    """cli_main(main) as `python -m` runs it; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        helpers.cli_main(COMMANDS[prog], prog, argv)
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(status, err: str, hint_command: str | None = None) -> str:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    match = LINE.match(lines[0])
    assert match, lines[0]
    if hint_command:
        assert match.group(1) == hint_command
    return lines[0]


# ---------------------------------------------------------------- every bad input: one line

BAD_INPUTS = [
    # life
    ("python -m scratch.life", ["--pattern", "glider", "--size", "x", "--steps", "1"]),
    ("python -m scratch.life", ["--pattern", "glider", "--size", "0", "--steps", "1"]),
    ("python -m scratch.life", ["--pattern", "glider", "--size", "8", "--steps", "-1"]),
    ("python -m scratch.life", ["--pattern", "nope", "--size", "8", "--steps", "1"]),
    ("python -m scratch.life", ["--size", "8", "--steps", "1"]),  # no pattern
    ("python -m scratch.life", ["--pattern", "acorn", "--size", "4", "--steps", "1"]),  # too big
    ("python -m scratch.life", ["--pattern", "glider", "--size", "8", "--steps", "1",
                                "--rule", "B9/S23"]),
    ("python -m scratch.life", ["--rle", "/nonexistent.rle", "--size", "8", "--steps", "1"]),
    ("python -m scratch.life", ["--pattern", "glider", "--size", "8", "--steps", "1",
                                "--frames", "0"]),
    # evoloop
    ("python -m scratch.evoloop", ["--steps", "1", "--size", "5"]),
    ("python -m scratch.evoloop", ["--steps", "many"]),
    ("python -m scratch.evoloop", ["--steps", "1", "--size", "100000000"]),
    # soup
    ("python -m scratch.soup", ["--programs", "3", "--epochs", "1"]),
    ("python -m scratch.soup", ["--programs", "1", "--epochs", "1"]),
    ("python -m scratch.soup", ["--epochs", "-4"]),
    ("python -m scratch.soup", ["--programs", "64", "--epochs", "1", "--seed-program", "zz"]),
    ("python -m scratch.soup", ["--programs", "64", "--epochs", "1", "--seed-program", "00"]),
    ("python -m scratch.soup", ["--epochs", "1", "--resume", "/nonexistent.npz"]),
    # ga
    ("python -m scratch.ga", []),
    ("python -m scratch.ga", ["--game", "chess"]),
    ("python -m scratch.ga", ["--game", "coins", "--population", "0"]),
    ("python -m scratch.ga", ["--game", "coins", "--population", "1"]),
    ("python -m scratch.ga", ["--game", "coins", "--generations", "many"]),
    ("python -m scratch.ga", ["--game", "onemax", "--gif", "x.gif"]),
    ("python -m scratch.ga", ["--game", "coins", "--crossover", "blend"]),
    ("python -m scratch.ga", ["--game", "onemax", "--selection", "best"]),
    # nn
    ("python -m scratch.nn", []),
    ("python -m scratch.nn", ["--task", "nope"]),
    ("python -m scratch.nn", ["--task", "digits-mlp", "--epochs", "0"]),
    ("python -m scratch.nn", ["--task", "mnist-mlp"]),
    ("python -m scratch.nn", ["--task", "mnist-mlp", "--data", "/nonexistent/dir"]),
    ("python -m scratch.nn", ["--task", "char-gpt", "--text", "/nonexistent.txt"]),
    ("python -m scratch.nn", ["--task", "digits-mlp", "--threads", "0"]),
]


@pytest.mark.parametrize(("prog", "argv"), BAD_INPUTS,
                         ids=[f"{p.split('.')[-1]}:{' '.join(a)}" for p, a in BAD_INPUTS])
def test_bad_input_is_one_error_line_exit_2(prog, argv, capsys, tmp_path):
    out = tmp_path / "out.json"
    needs_json = prog != "python -m scratch.nn" and "--list-games" not in argv
    status, err = run_in_process(capsys, prog, [*argv, "--json", str(out)] if needs_json else argv)
    assert_one_line_error(status, err)
    assert not out.exists()


def test_a_short_text_for_char_gpt_is_one_line(capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    status, err = run_in_process(capsys, "python -m scratch.nn",
                                 ["--task", "char-gpt", "--text", str(short)])
    assert "too short to train on" in assert_one_line_error(status, err)


def test_an_unwritable_output_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status, err = run_in_process(capsys, "python -m scratch.life", [
        "--pattern", "glider", "--size", "8", "--steps", "1", "--json", str(blocker / "x.json")])
    assert str(blocker) in assert_one_line_error(status, err)


def test_a_corrupt_saved_soup_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    status, err = run_in_process(capsys, "python -m scratch.soup", [
        "--epochs", "1", "--resume", str(bad), "--json", str(tmp_path / "x.json")])
    assert "not a soup saved with --save" in assert_one_line_error(status, err)


ENTRY_POINTS = [  # through `python -m` (the module wiring, not just main), with the hint
    (["scratch.life", "--pattern", "nope", "--size", "8", "--steps", "1"], "scratch.life --help"),
    (["scratch.ca.life", "--size", "8"], "scratch.life --help"),
    (["scratch.evoloop", "--steps", "x"], "scratch.evoloop --help"),
    (["scratch.ca.evoloop", "--steps", "1", "--size", "5"], "scratch.evoloop --help"),
    (["scratch.soup", "--programs", "3", "--epochs", "1"], "scratch.soup --help"),
    (["scratch.ca.soup", "--epochs", "1", "--resume", "/none.npz"], "scratch.soup --help"),
    (["scratch.ga", "--game", "chess"], "scratch.ga --list-games"),
    (["scratch.ga", "--game", "coins", "--population", "-3"], "scratch.ga --help"),
    (["scratch.nn", "--task", "nope"], "scratch.nn --help"),
    (["scratch.ca.figures", "--bogus"], "scratch.ca.figures --help"),
    (["scratch.ga.figures", "--seed", "-1"], "scratch.ga.figures --help"),
    (["scratch.nn.figures", "--gpt-epochs", "0"], "scratch.nn.figures --help"),
]


@pytest.mark.parametrize(("argv", "hint"), ENTRY_POINTS, ids=[a[0] for a, _ in ENTRY_POINTS])
def test_python_dash_m_entry_points_follow_the_contract(argv, hint, tmp_path):
    done = subprocess.run([sys.executable, "-m", *argv, "--json", str(tmp_path / "o.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert_one_line_error(done.returncode, done.stderr, f"python -m {hint}")
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("hint", sorted({hint for _, hint in ENTRY_POINTS}))
def test_every_hint_is_a_working_command(hint):
    done = subprocess.run([sys.executable, "-m", *shlex.split(hint)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() and not done.stderr, hint


def test_cli_main_exit_codes(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def missing_file(argv):
        open("/nonexistent/file")

    def out_of_memory(argv):
        raise MemoryError

    def fine(argv):
        return None

    with pytest.raises(SystemExit) as exit_info:
        helpers.cli_main(interrupted, "python -m scratch.life")
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    for main, text in [(missing_file, "/nonexistent/file: No such file or directory"),
                       (out_of_memory, "out of memory")]:
        with pytest.raises(SystemExit) as exit_info:
            helpers.cli_main(main, "python -m scratch.life")
        line = assert_one_line_error(exit_info.value.code, capsys.readouterr().err,
                                     "python -m scratch.life --help")
        assert text in line
    with pytest.raises(SystemExit) as exit_info:
        helpers.cli_main(fine, "python -m scratch.life")
    assert exit_info.value.code == 0


def test_error_line_folds_a_multi_line_message_and_keeps_a_custom_hint(capsys):
    def main(argv):
        raise helpers.UsageError("first\nsecond", "python -m scratch.ga --list-games")

    with pytest.raises(SystemExit) as exit_info:
        helpers.cli_main(main, "python -m scratch.ga")
    assert capsys.readouterr().err == (
        "error: first second; see: python -m scratch.ga --list-games\n")
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- huge sizes fail fast


HUGE = [
    ("python -m scratch.life", ["--pattern", "glider", "--size", "1000000000", "--steps", "1"],
     "PiB"),
    ("python -m scratch.soup", ["--programs", "1000000000000", "--epochs", "1"], "TiB"),
    ("python -m scratch.ga", ["--game", "snake", "--population", "100000000000"], "PiB"),
    ("python -m scratch.ga", ["--game", "onemax", "--population", "100000000"], "TiB"),
    ("python -m scratch.evoloop", ["--steps", "1", "--size", "10000000"], "TiB"),
]


@pytest.mark.parametrize(("prog", "argv", "unit"), HUGE, ids=[p[-10:] for p, _, _ in HUGE])
def test_huge_sizes_are_refused_at_once_with_the_memory_they_need(prog, argv, unit, capsys,
                                                                  tmp_path):
    start = time.perf_counter()
    status, err = run_in_process(capsys, prog, [*argv, "--json", str(tmp_path / "x.json")])
    assert time.perf_counter() - start < 2
    line = assert_one_line_error(status, err, f"{prog} --help")
    assert re.search(rf"needs [\d.]+ {unit} of memory; this machine has [\d.]+ [KMGT]iB", line)


def test_an_rle_header_too_big_for_the_board_is_refused_before_allocating(capsys, tmp_path):
    rle = tmp_path / "wide.rle"
    rle.write_text("x = 1000000000, y = 3\n3o!\n")
    start = time.perf_counter()
    status, err = run_in_process(capsys, "python -m scratch.life", [
        "--rle", str(rle), "--size", "64", "--steps", "1", "--json", str(tmp_path / "x.json")])
    assert time.perf_counter() - start < 2
    assert "x = 1000000000, y = 3" in assert_one_line_error(status, err)


def test_parse_rle_checks_memory_before_allocating(monkeypatch):
    from scratch.ca.life_rle import parse_rle

    monkeypatch.setattr(helpers, "available_memory", lambda: 1 << 20)  # pretend 1 MiB
    with pytest.raises(ValueError, match=r"x = 3000, y = 3000 needs 8\.6 MiB"):
        parse_rle("x = 3000, y = 3000\n3o!")
    assert parse_rle("x = 3, y = 1\n3o!")[0].sum() == 3


def test_check_memory_uses_what_is_available(monkeypatch):
    monkeypatch.setattr(helpers, "available_memory", lambda: 10 * 1024**3)
    helpers.check_memory(10 * 1024**3, "fits exactly")
    with pytest.raises(ValueError, match=r"^x needs 10\.0 GiB of memory; this machine has 10\.0"):
        helpers.check_memory(10 * 1024**3 + 1, "x")
    assert helpers.format_bytes(1536) == "1.5 KiB" and helpers.format_bytes(12) == "12 B"
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.undo()
    assert 0 < helpers.available_memory() <= physical


# ---------------------------------------------------------------- the atomic writer


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_umask_mode_like_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        written = [
            helpers.write_bytes(tmp_path / "a.bin", b"\x00\x01"),
            helpers.write_text(tmp_path / "sub" / "a.txt", "text"),
            helpers.write_json(tmp_path / "a.json", {"a": [1, 2]}),
            helpers.save_npz(tmp_path / "weights", w=np.arange(3)),
        ]
        assert helpers.current_umask() == umask
    finally:
        os.umask(old)
    for path in written:
        assert mode_of(path) == mode_of(tmp_path / "plain") == 0o666 & ~umask, path
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2]}
    with np.load(tmp_path / "weights") as archive:  # the exact name: no '.npz' appended
        assert archive["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin", "a.json", "plain", "sub", "weights"]  # no temp files left


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    helpers.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), helpers.atomic_open(target, "w") as f:
        f.write('{"v": 2, "half')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(ValueError):
        helpers.atomic_open(target, "a").__enter__()


MODE_RUNS = {  # every kind of file the commands write: JSON, GIF, PNG, .npz
    "life": (["scratch.life", "--pattern", "glider", "--size", "16", "--steps", "4",
              "--json", "life.json", "--gif", "life.gif"], ["life.gif", "life.json"]),
    "evoloop": (["scratch.evoloop", "--steps", "2", "--size", "40", "--json", "evo.json",
                 "--gif", "evo.gif"], ["evo.gif", "evo.json"]),
    "soup": (["scratch.soup", "--programs", "64", "--epochs", "2", "--json", "soup.json",
              "--plot", "soup.png", "--save", "soup.npz"], ["soup.json", "soup.npz", "soup.png"]),
    "ga": (["scratch.ga", "--game", "coins", "--generations", "1", "--population", "10",
            "--json", "ga.json", "--plot", "ga.png", "--gif", "ga.gif", "--quiet"],
           ["ga.gif", "ga.json", "ga.png"]),
    "nn": (["scratch.nn", "--task", "digits-mlp", "--epochs", "1", "--json", "nn.json",
            "--save", "nn.npz"], ["nn.json", "nn.npz"]),
}


@pytest.mark.parametrize("command", sorted(MODE_RUNS))
def test_files_written_by_scratch_commands_are_0644_under_umask_022(command, tmp_path):
    argv, expected = MODE_RUNS[command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, umask=0o022, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == expected  # and no temp files
    assert {name: oct(mode_of(tmp_path / name)) for name in expected} == {
        name: "0o644" for name in expected}


# ---------------------------------------------------------------- one home for the helpers


def test_helpers_import_only_the_standard_library_and_numpy():
    code = ("import sys; import scratch.helpers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('scratch', 'training', 'serving', 'torch', 'numba', 'PIL', 'matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "['scratch', 'scratch.helpers']", done.stderr


def test_no_second_atomic_writer_or_error_printer_in_scratch():
    """The writer and the error contract live in scratch/helpers.py only."""
    patterns = re.compile(
        r"mkstemp|os\.replace|NamedTemporaryFile|sys\.exit\(|file=sys\.stderr|"
        r"argparse\.ArgumentParser\(|\.savefig\(\s*(?!handle)|np\.savez|\.write_(text|bytes)\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "scratch").rglob("*.py")) if path.name != "helpers.py"
        for n, line in enumerate(path.read_text().splitlines(), 1) if patterns.search(line)
    ]
    assert offenders == []


def test_omp_wait_policy_is_set_once_by_the_ca_package():
    sources = {p.relative_to(ROOT).as_posix(): p.read_text()
               for p in (ROOT / "scratch").rglob("*.py")}
    assert [p for p, text in sources.items() if "OMP_WAIT_POLICY" in text] == [
        "scratch/ca/__init__.py"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, scratch.life; print(os.environ.get('OMP_WAIT_POLICY'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    assert done.stdout.strip() == "PASSIVE", done.stderr
