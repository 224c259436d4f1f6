"""Life: known patterns, reference vs bit-packed engines, RLE, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scratch.ca.life import PackedLife, parse_rule, place_centered, step_reference
from scratch.ca.life_rle import PATTERNS, builtin_pattern, format_rle, parse_rle

ENGINES = ["numba", "numpy"]


def run(cells, steps, engine, rule="B3/S23", torus=True):
    if engine == "reference":
        for _ in range(steps):
            cells = step_reference(cells, parse_rule(rule), torus)
        return cells
    return PackedLife(cells, rule, torus, engine).step(steps).cells


@pytest.mark.parametrize("engine", ["reference", *ENGINES])
def test_blinker_has_period_two(engine):
    board = place_centered(builtin_pattern("blinker"), 9)
    once, twice = run(board, 1, engine), run(board, 2, engine)
    assert not (once == board).all() and (twice == board).all()
    assert once.sum() == 3 and once[3:6, 4].all()  # the vertical phase


@pytest.mark.parametrize("engine", ["reference", *ENGINES])
def test_block_is_still_and_glider_moves_one_diagonal_in_four(engine):
    block = place_centered(builtin_pattern("block"), 8)
    assert (run(block, 5, engine) == block).all()
    glider = place_centered(builtin_pattern("glider"), 20)
    moved = run(glider, 4, engine)
    assert (moved == np.roll(glider, (1, 1), axis=(0, 1))).all()
    # On a torus the glider comes back after 4 * size generations.
    assert (run(glider, 80, engine) == glider).all()


def test_r_pentomino_stabilises_at_116_cells_at_generation_1103():
    # 1024 cells: escaping gliders travel ~276 cells by then, far from the board edge.
    life = PackedLife(place_centered(builtin_pattern("r-pentomino"), 1024), torus=False)
    assert life.step(1103).population == 116


def test_gosper_gun_repeats_every_30_generations_and_emits_gliders():
    board = np.zeros((120, 120), dtype=bool)
    board[5:14, 5:41] = builtin_pattern("gosper-glider-gun")
    life = PackedLife(board, torus=False)
    gun_box = (slice(0, 14), slice(0, 45))  # gliders leave below row 14
    populations = []
    for _ in range(4):
        life.step(30)
        populations.append(life.population)
    assert (life.cells[gun_box] == board[gun_box]).all()
    assert np.diff(populations).tolist() == [5, 5, 5]  # one new glider per period


@pytest.mark.parametrize("torus", [True, False])
@pytest.mark.parametrize(
    "rule", ["B3/S23", "B36/S23", "B2/S", "B0/S8", "B1357/S1357", "B345/S0178"]
)
def test_packed_engines_match_reference_on_random_boards(rule, torus):
    rng = np.random.default_rng(hash(rule) % 1000 + torus)
    for height, width in [(1, 1), (5, 64), (17, 70), (9, 130), (33, 3), (24, 200)]:
        cells = rng.random((height, width)) < 0.4
        boards = {engine: PackedLife(cells, rule, torus, engine) for engine in ENGINES}
        reference = cells
        for _ in range(7):
            reference = step_reference(reference, parse_rule(rule), torus)
            for engine, board in boards.items():
                assert (board.step().cells == reference).all(), (engine, height, width)
        assert boards["numba"].population == int(reference.sum())


def test_rule_parsing():
    assert str(parse_rule("b3/s23")) == "B3/S23"
    assert parse_rule("23/3") == parse_rule("B3/S23") == parse_rule("S23/B3")
    assert parse_rule("B/S") .birth == frozenset()
    with pytest.raises(ValueError):
        parse_rule("B9/S23")


def test_rle_round_trip_and_builtins():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (7, 13), (30, 90)]:
        cells = rng.random(shape) < 0.3
        cells[-1, -1] = True  # keep the bounding box, as RLE headers describe it
        text = format_rle(cells, "B36/S23")
        back, rule = parse_rle(text)
        assert rule == "B36/S23" and (back == cells).all()
        assert all(len(line) <= 70 for line in text.splitlines())
    parsed, _ = parse_rle("#N comment\nx = 3, y = 3\nbo$2bo$3o!")
    assert (parsed == builtin_pattern("glider")).all()
    assert builtin_pattern("gosper-glider-gun").sum() == 36
    assert builtin_pattern("acorn").sum() == 7 and len(PATTERNS) >= 4
    with pytest.raises(ValueError):
        parse_rle("x = 2, y = 1\n3o!")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "scratch.life", *args], capture_output=True, text=True
    )


def test_cli_writes_population_json_and_gif(tmp_path):
    out, gif = tmp_path / "life.json", tmp_path / "life.gif"
    result = _cli("--pattern", "glider", "--size", "32", "--steps", "10", "--json", str(out),
                  "--gif", str(gif))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == {"population": 5, "steps": 10}
    assert gif.read_bytes()[:6] == b"GIF89a"
    rle = tmp_path / "acorn.rle"
    rle.write_text(PATTERNS["acorn"])
    result = _cli("--rle", str(rle), "--size", "64", "--steps", "3", "--json", str(out),
                  "--engine", "reference")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["steps"] == 3


def test_cli_bad_input_is_one_line_error(tmp_path):
    result = _cli("--pattern", "nope", "--size", "8", "--steps", "1", "--json",
                  str(tmp_path / "x.json"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: argument --pattern: invalid choice: 'nope'")
    assert result.stderr.endswith("; see: python -m scratch.life --help\n")
    assert not (tmp_path / "x.json").exists()
