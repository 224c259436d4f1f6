"""The figure makers draw what the docs say: colour keys and scores under the GIFs, captions that
count what is on the board, the training diagrams without any trained model."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scratch.ca import display
from scratch.ca import figures as ca_figures
from scratch.ga import coins, render, snake
from scratch.ga import figures as ga_figures
from training import figures as training_figures


def frames_of(path) -> list[Image.Image]:
    image = Image.open(path)
    out = []
    for i in range(image.n_frames):
        image.seek(i)
        out.append(image.convert("RGB"))
    return out


def test_a_ca_gif_with_a_key_has_a_band_under_the_board(tmp_path):
    board = np.zeros((32, 32), np.uint8)
    board[10:12, 10:12] = 1
    plain, keyed = tmp_path / "plain.gif", tmp_path / "keyed.gif"
    display.save_gif(plain, [board, board], ca_figures.WHITE_BLACK, max_pixels=128)
    display.save_gif(keyed, [board, board], ca_figures.WHITE_BLACK, max_pixels=128,
                     captions=["generation 0", "generation 1"], legend=ca_figures.LIFE_KEY)
    a, b = frames_of(plain), frames_of(keyed)
    assert a[0].size == (128, 128) and b[0].size[0] == 128 and b[0].size[1] > 128 + 30
    assert np.array_equal(np.asarray(b[0])[:128], np.asarray(a[0]))  # the board is unchanged
    band = np.asarray(b[0])[130:]
    assert (band == 0).all(axis=2).sum() > 50  # black text and swatches in the band
    assert not np.array_equal(np.asarray(b[0]), np.asarray(b[1]))  # each frame its caption


def test_life_captions_count_live_cells():
    frames = [np.zeros((8, 8), bool), np.ones((8, 8), bool)]
    assert ca_figures.life_captions(frames, 25) == ["generation 0: 0 live cells",
                                                    "generation 25: 64 live cells"]


def test_coins_captions_count_collected_coins():
    base = np.zeros((3, 3), np.uint8)
    base[0, 0] = base[2, 2] = coins.COIN
    after = base.copy()
    after[0, 0] = coins.TRAIL
    assert ga_figures.coins_captions([base, after]) == ["step 0: 0 of 2 coins",
                                                        "step 1: 1 of 2 coins"]


def test_snake_captions_count_food_eaten():
    def grid(food):
        g = np.zeros((4, 4), np.uint8)
        g[food] = snake.FOOD
        return g

    frames = [grid((0, 0)), grid((0, 0)), grid((3, 1)), grid((3, 1)), grid((1, 2))]
    assert [c.split(": ")[1] for c in ga_figures.snake_captions(frames)] == \
        ["0 food eaten"] * 2 + ["1 food eaten"] * 2 + ["2 food eaten"]


def test_a_ga_replay_with_a_key_keeps_few_colours(tmp_path):
    grid = np.zeros((5, 5), np.uint8)
    grid[2, 2], grid[0, 0] = coins.AGENT, coins.COIN
    path = tmp_path / "replay.gif"
    render.save_gif([grid, grid], str(path), border=False, cell=16,
                    captions=["step 0: 0 of 1 coins", "step 1: 0 of 1 coins"],
                    legend=ga_figures.KEYS["coins"])
    first = frames_of(path)[0]
    assert first.size[1] > 80 + 30
    assert len(first.getcolors(256)) <= 8  # text drawn without anti-aliasing


def test_training_diagrams_need_no_model(tmp_path):
    training_figures.main(["--diagrams", "--out", str(tmp_path)])
    for name in ("training_lora.png", "training_pipeline.png"):
        image = Image.open(tmp_path / name)
        assert image.size[0] > 800
    assert not (tmp_path / "training_curves.png").exists()
