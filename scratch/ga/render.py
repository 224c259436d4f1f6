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
    frames: Sequence[np.ndarray],
    path: str,
    border: bool,
    cell: int = 16,
    ms: int = 80,
    captions: Sequence[str] | None = None,
    legend: Sequence[tuple[int, str]] | None = None,
) -> None:
    """Write the replay as an animated GIF, atomically. `captions` (one line per frame, e.g. the
    score so far) and `legend` ((cell code, label) colour key) go in a band under the board."""
    pad = 1 if border else 0
    images = []
    for i, grid in enumerate(frames):
        framed = np.pad(grid, pad, constant_values=1)
        rgb = COLOURS[framed].repeat(cell, axis=0).repeat(cell, axis=1)
        image = Image.fromarray(rgb)
        if captions is not None or legend:
            image = _with_band(image, captions[i] if captions is not None else "", legend or [])
        images.append(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=8))
    helpers.save_gif(path, images, duration_ms=ms)


def _with_band(image: Image.Image, caption: str, legend: Sequence[tuple[int, str]]) -> Image.Image:
    """The board with a white band under it: the colour key, wrapped to the width, and a caption.
    Text is drawn without anti-aliasing, so the GIF keeps its few colours."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    width, line = image.width, 18
    rows, x = [[]], 6
    for code, label in legend:
        item = 18 + int(font.getlength(label)) + 12
        if x + item > width and rows[-1]:
            rows.append([])
            x = 6
        rows[-1].append((x, code, label))
        x += item
    n_lines = (len(rows) if legend else 0) + (1 if caption else 0)
    out = Image.new("RGB", (width, image.height + 6 + line * n_lines), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.fontmode = "1"
    y = image.height + 4
    for row in rows if legend else []:
        for x, code, label in row:
            draw.rectangle([x, y + 2, x + 12, y + 14], fill=tuple(int(c) for c in COLOURS[code]),
                           outline=(0, 0, 0))
            draw.text((x + 17, y), label, fill=(0, 0, 0), font=font)
        y += line
    if caption:
        draw.text((6, y), caption, fill=(0, 0, 0), font=font)
    return out


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
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    curves = [(evals, [h["best"] for h in history], "GA best", "#c03030", "-"),
              (evals, [h["mean"] for h in history], "GA mean", "#e0a0a0", "-")]
    if random_curve:
        x, y = zip(*random_curve, strict=True)
        curves.append((list(x), list(y), "random search best", "#4070b0", "--"))
    for x, y, label, color, style in curves:
        ax.plot(x, y, label=f"{label} (last: {y[-1]:.3g})", color=color, linestyle=style)
        ax.annotate(f"{y[-1]:.3g}", (x[-1], y[-1]), xytext=(4, 0), textcoords="offset points",
                    va="center", color=color, fontsize=9)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.margins(x=0.08)
    # below the axes, so it never covers a curve
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8,
              frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        helpers.save_figure(fig, path)
    finally:
        plt.close(fig)
