"""Small shared helpers for the cellular-automata CLIs: atomic outputs, errors, progress, GIFs."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def die(error: BaseException | str) -> int:
    """Print a one-line error and return the exit status for main()."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def _atomic_path(path: Path):
    """A temp file beside `path` (same filesystem, so os.replace is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = _atomic_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict) -> None:
    write_bytes_atomic(path, (json.dumps(payload) + "\n").encode())


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None):
    """tqdm progress bar on an interactive terminal, silent otherwise."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)


def save_gif(
    path: Path,
    frames: Sequence[np.ndarray],
    palette: Sequence[tuple[int, int, int]],
    max_pixels: int = 512,
    duration_ms: int = 80,
) -> None:
    """Write frames of small integer states (0..len(palette)-1) as an animated GIF.

    Boards larger than max_pixels are shown downsampled (a pixel is the maximum state of its
    block, so sparse live cells stay visible); small boards are scaled up to be seen.
    """
    from PIL import Image

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
    tmp = _atomic_path(Path(path))
    try:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms,
            loop=0, optimize=False,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
