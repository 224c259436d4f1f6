"""What the CA commands show: a progress bar on a terminal, GIFs of boards."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scratch import helpers


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None):
    """tqdm progress bar on an interactive terminal, silent otherwise."""
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)


def gif_bytes_estimate(shape: tuple[int, int], n_frames: int) -> int:
    """Memory for n_frames of a board kept as uint8 states until the GIF is written."""
    return int(shape[0]) * int(shape[1]) * int(n_frames)


def save_gif(
    path: Path,
    frames: Sequence[np.ndarray],
    palette: Sequence[tuple[int, int, int]],
    max_pixels: int = 512,
    duration_ms: int = 80,
    captions: Sequence[str] | None = None,
    legend: Sequence[tuple[int, str]] | None = None,
) -> None:
    """Write frames of small integer states (0..len(palette)-1) as an animated GIF, atomically.

    Boards larger than max_pixels are shown downsampled (a pixel is the maximum state of its
    block, so sparse live cells stay visible); small boards are scaled up to be seen.
    `captions` (one line per frame) and `legend` ((state, label) colour key) go in a band under
    the board.
    """
    h, w = frames[0].shape
    block = max(1, -(-max(h, w) // max_pixels))
    scale = max(1, max_pixels // max(h, w)) if block == 1 else 1
    text_white, text_black = len(palette), len(palette) + 1  # two more palette entries
    flat_palette = [c for rgb in [*palette, (255, 255, 255), (0, 0, 0)] for c in rgb]
    flat_palette += [0] * (768 - len(flat_palette))
    images = []
    for i, frame in enumerate(frames):
        small = frame
        if block > 1:
            hh, ww = (h // block) * block, (w // block) * block
            small = frame[:hh, :ww].reshape(hh // block, block, ww // block, block).max(axis=(1, 3))
        if scale > 1:
            small = np.kron(small, np.ones((scale, scale), dtype=small.dtype))
        image = Image.fromarray(small.astype(np.uint8), mode="P")
        if captions is not None or legend:
            image = _with_band(image, captions[i] if captions is not None else "", legend or [],
                               text_white, text_black)
        image.putpalette(flat_palette)
        images.append(image)
    helpers.save_gif(path, images, duration_ms=duration_ms, optimize=False)


def _with_band(image: Image.Image, caption: str, legend: Sequence[tuple[int, str]],
               white: int, black: int) -> Image.Image:
    """The board with a white band under it: a colour key (a swatch per state and its label,
    wrapped to the width) and a caption line. Drawn in palette indices, so no anti-aliasing
    adds colours."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    width, line = image.width, 18
    rows, x = [[]], 6
    for state, label in legend:
        item = 18 + int(font.getlength(label)) + 12
        if x + item > width and rows[-1]:
            rows.append([])
            x = 6
        rows[-1].append((x, state, label))
        x += item
    n_lines = (len(rows) if legend else 0) + (1 if caption else 0)
    out = Image.new("P", (width, image.height + 6 + line * n_lines), white)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.line([(0, image.height), (width - 1, image.height)], fill=black)  # the board's edge
    y = image.height + 4
    for row in rows if legend else []:
        for x, state, label in row:
            draw.rectangle([x, y + 2, x + 12, y + 14], fill=state, outline=black)
            draw.text((x + 17, y), label, fill=black, font=font)
        y += line
    if caption:
        draw.text((6, y), caption, fill=black, font=font)
    return out
