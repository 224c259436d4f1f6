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
) -> None:
    """Write frames of small integer states (0..len(palette)-1) as an animated GIF, atomically.

    Boards larger than max_pixels are shown downsampled (a pixel is the maximum state of its
    block, so sparse live cells stay visible); small boards are scaled up to be seen.
    """
    h, w = frames[0].shape
    block = max(1, -(-max(h, w) // max_pixels))
    scale = max(1, max_pixels // max(h, w)) if block == 1 else 1
    flat_palette = [c for rgb in palette for c in rgb]
    flat_palette += [0] * (768 - len(flat_palette))
    images = []
    for frame in frames:
        small = frame
        if block > 1:
            hh, ww = (h // block) * block, (w // block) * block
            small = frame[:hh, :ww].reshape(hh // block, block, ww // block, block).max(axis=(1, 3))
        if scale > 1:
            small = np.kron(small, np.ones((scale, scale), dtype=small.dtype))
        image = Image.fromarray(small.astype(np.uint8), mode="P")
        image.putpalette(flat_palette)
        images.append(image)
    helpers.save_gif(path, images, duration_ms=duration_ms, optimize=False)
