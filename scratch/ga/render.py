"""Pictures of a run: terminal frames, an animated GIF of a replay, the fitness-curve plot."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from scratch import helpers

# Cell codes shared by the games: empty, wall, coin/food, agent/head, trail/body.
SYMBOLS = np.array([" ", "#", "o", "@", "."])
COLOURS = np.array(
    [(245, 245, 240), (60, 60, 70), (230, 180, 30), (200, 40, 40), (120, 170, 220)], dtype=np.uint8
)


def text_frame(grid: np.ndarray, border: bool = False) -> str:
    """A grid of cell codes as lines of characters (border: frame a board that has no walls)."""
    lines = ["".join(row) for row in SYMBOLS[grid]]
    if border:
        edge = "#" * (grid.shape[1] + 2)
        lines = [edge, *("#" + line + "#" for line in lines), edge]
    return "\n".join(lines)


def play_in_terminal(frames: Sequence[np.ndarray], border: bool, delay: float = 0.08) -> None:
    """Animate frames in place with ANSI cursor moves."""
    for i, grid in enumerate(frames):
        text = text_frame(grid, border)
        if i:
            sys.stdout.write(f"\x1b[{text.count(chr(10)) + 2}A")
        sys.stdout.write(f"{text}\nstep {i}\n")
        sys.stdout.flush()
        time.sleep(delay)


def save_gif(
    frames: Sequence[np.ndarray], path: str, border: bool, cell: int = 16, ms: int = 80
) -> None:
    """Write the replay as an animated GIF, atomically."""
    pad = 1 if border else 0
    images = []
    for grid in frames:
        framed = np.pad(grid, pad, constant_values=1)
        rgb = COLOURS[framed].repeat(cell, axis=0).repeat(cell, axis=1)
        images.append(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8))
    helpers.save_gif(path, images, duration_ms=ms)


def save_plot(
    history: list[dict],
    random_curve: list[tuple[int, float]],
    path: str,
    title: str,
) -> None:
    """Best and mean fitness per generation, with random search's best-so-far at the same
    number of evaluations (x axis: evaluations, so both use the same budget scale)."""
    import matplotlib  # ~1.5 s to import: only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h["evaluations"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(evals, [h["best"] for h in history], label="GA best", color="#c03030")
    ax.plot(evals, [h["mean"] for h in history], label="GA mean", color="#e0a0a0")
    if random_curve:
        x, y = zip(*random_curve, strict=True)
        ax.plot(x, y, label="random search best", color="#4070b0", linestyle="--")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        helpers.save_figure(fig, path)
    finally:
        plt.close(fig)
