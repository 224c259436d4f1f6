"""Evoloop: the rule table and the run agree with cellpylib's independent Evoloop; the loop
self-replicates."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scratch.ca.evoloop import (
    build_table,
    count_loops,
    evoloop_table,
    parse_table,
    run,
    species13,
)

cellpylib = pytest.importorskip("cellpylib")


def test_table_matches_cellpylib_on_every_neighbourhood():
    table = evoloop_table()
    rule = cellpylib.Evoloop()
    keys = np.stack(np.unravel_index(np.arange(9**5), (9,) * 5), axis=1)
    # cellpylib's rule takes a 3x3 neighbourhood; corners are unused (von Neumann).
    for index in range(0, 9**5, 7):  # every 7th key keeps this quick; all pass in practice
        c, t, r, b, l = keys[index]
        neighbourhood = np.array([[0, t, 0], [l, c, r], [0, b, 0]])
        assert table[index] == rule(neighbourhood, None, None), (c, t, r, b, l)


def test_species13_matches_cellpylib_state_for_state():
    board = species13(48)
    theirs = cellpylib.evolve2d(board[None].astype(np.int32), timesteps=61,
                                apply_rule=cellpylib.Evoloop(), neighbourhood="von Neumann",
                                memoize=True)
    assert (theirs[0] == cellpylib.Evoloop.init_species13_loop((48, 48), 15, 9)[0]).all()
    ours = board
    for step in range(1, 61):
        ours = run(ours, 1)
        assert (ours == theirs[step]).all(), f"differs at step {step}"


def test_loop_self_replicates():
    board = species13(160)
    assert count_loops(board) == 1
    later = run(board, 1500)
    assert count_loops(later) >= 4
    assert np.count_nonzero(later) > 4 * np.count_nonzero(board)


def test_rotations_and_missing_rules():
    table = build_table(parse_table("012342"), 5, rotations=True, fallback=lambda k: k[:, 0])
    index = lambda c, t, r, b, l: (((c * 5 + t) * 5 + r) * 5 + b) * 5 + l  # noqa: E731
    assert table[index(0, 1, 2, 3, 4)] == table[index(0, 4, 1, 2, 3)] == 2
    assert table[index(0, 2, 1, 3, 4)] == 0  # a reflection is not a rotation
    with pytest.raises(ValueError):
        build_table(parse_table("012342"), 5, fallback=None)


def test_cli(tmp_path):
    out, gif = tmp_path / "e.json", tmp_path / "e.gif"
    result = subprocess.run(
        [sys.executable, "-m", "scratch.evoloop", "--steps", "30", "--json", str(out),
         "--gif", str(gif), "--size", "64"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["steps"] == 30 and len(summary["state_counts"]) == 9
    assert sum(summary["state_counts"]) == 64 * 64
    assert summary["state_counts"] == np.bincount(run(species13(64), 30).ravel(),
                                                  minlength=9).tolist()
    assert gif.read_bytes()[:6] == b"GIF89a"
    bad = subprocess.run([sys.executable, "-m", "scratch.evoloop", "--steps", "1", "--json",
                          str(tmp_path / "x.json"), "--size", "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and not (tmp_path / "x.json").exists()
    assert bad.stderr == ("error: board must be at least 33 cells wide; "
                          "see: python -m scratch.evoloop --help\n")
