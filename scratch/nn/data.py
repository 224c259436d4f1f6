"""Data: a mini-batch loader, scikit-learn's bundled digits, MNIST IDX files, a local text."""

from __future__ import annotations

import gzip
import importlib
import io
import pydoc
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class DataLoader:
    """Yields (x, y) mini-batches; reshuffled every pass when shuffle is on."""

    def __init__(self, x, y, batch_size: int, shuffle: bool = True, rng=None, drop_last=False):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rng = rng if rng is not None else np.random.default_rng()

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield self.x[batch], self.y[batch]


def load_digits(test_fraction: float = 0.2, split_seed: int = 0):
    """scikit-learn's 1,797 8x8 digit images, pixels scaled to [0, 1], a fixed stratified split.

    The split does not depend on the training seed, so seeds vary only the model.
    Returns x_train (N, 64), y_train, x_test, y_test.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # seconds to import: only here

    digits = sk_load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):  # stratified: each class keeps its share in the test set
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(test_fraction * len(members))]] = True
    return x[~test], y[~test], x[test], y[test]


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST's format; gzipped if the name ends in .gz).

    Layout: two zero bytes, a type code, the number of dimensions n, n big-endian uint32 sizes,
    then the values, big-endian, row-major.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - 4 - 4 * ndim != expected:
        raise ValueError(f"{path}: header says {shape} but the data has the wrong length")
    return (
        np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def load_mnist(directory: str | Path):
    """MNIST from the four standard IDX files in `directory` (optionally .gz).

    Returns x_train (60000, 1, 28, 28) float32 in [0, 1], y_train, x_test, y_test.
    """
    directory = Path(directory)

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (directory / name).exists():
                return directory / name
        raise FileNotFoundError(f"{directory}: no {stem}[.gz] (download MNIST's IDX files there)")

    def images(stem):
        return (read_idx(find(stem)).astype(np.float32) / 255.0)[:, None]

    def labels(stem):
        return read_idx(find(stem)).astype(np.int64)

    return (
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


DEFAULT_TEXT_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "re")


def default_text() -> str:
    """A small local corpus: the plain-text pydoc pages of a few standard-library modules."""
    pages = [
        pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        for name in DEFAULT_TEXT_MODULES
    ]
    return "\n".join(pages)


class CharDataset:
    """A text as integer character codes, with a 90/10 train/validation split."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        data = np.array([self.index[c] for c in text], dtype=np.int64)
        cut = int(0.9 * len(data))
        self.train, self.val = data[:cut], data[cut:]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def batch(self, split: str, batch_size: int, block_size: int, rng):
        """Random windows: inputs x[i:i+T] and targets shifted by one, x[i+1:i+T+1]."""
        data = self.train if split == "train" else self.val
        starts = rng.integers(0, len(data) - block_size - 1, size=batch_size)
        offsets = np.arange(block_size)
        x = data[starts[:, None] + offsets]
        return x, data[starts[:, None] + offsets + 1]
