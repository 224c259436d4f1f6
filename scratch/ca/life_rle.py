"""RLE pattern files (the format Golly and LifeWiki use) and a few built-in patterns.

An RLE file is: optional `#` comment lines, a header `x = W, y = H[, rule = B3/S23]`, then the
cells as runs: `<count>b` dead, `<count>o` alive, `<count>$` end of row(s), `!` end of pattern.
A missing count means 1. Only two-state patterns are read; other state letters are an error.
"""

from __future__ import annotations

import re

import numpy as np

from scratch import helpers

_HEADER = re.compile(r"^\s*x\s*=\s*(\d+)\s*,\s*y\s*=\s*(\d+)\s*(?:,\s*rule\s*=\s*(\S+))?", re.I)
_TOKEN = re.compile(r"(\d*)([bo$!.A-Za-z])")

# Built-in patterns, stored as RLE bodies so they are checked by the same reader users rely on.
PATTERNS: dict[str, str] = {
    "blinker": "x = 3, y = 1\n3o!",
    "block": "x = 2, y = 2\n2o$2o!",
    "glider": "x = 3, y = 3\nbo$2bo$3o!",
    "r-pentomino": "x = 3, y = 3\nb2o$2o$bo!",
    "acorn": "x = 7, y = 3\nbo$3bo$2o2b3o!",
    "gosper-glider-gun": (
        "x = 36, y = 9, rule = B3/S23\n"
        "24bo$22bobo$12b2o6b2o12b2o$11bo3bo4b2o12b2o$2o8bo5bo3b2o$2o8bo3bob2o4bobo$"
        "10bo5bo7bo$11bo3bo$12b2o!"
    ),
}


def parse_rle(text: str, max_size: int | None = None) -> tuple[np.ndarray, str | None]:
    """Parse RLE text into (cells as a bool array of shape (y, x), rule string or None).

    The header's size is checked before anything is allocated: against max_size (the board the
    pattern must fit, when given) and against the memory available."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError("RLE: empty pattern")
    header = _HEADER.match(lines[0])
    if header is None:
        raise ValueError(f"RLE: expected a header 'x = W, y = H', got {lines[0]!r}")
    width, height = int(header.group(1)), int(header.group(2))
    rule = header.group(3)
    if max_size is not None and max(width, height) > max_size:
        raise ValueError(f"RLE header says x = {width}, y = {height}: the pattern does not fit "
                         f"a {max_size}x{max_size} board")
    helpers.check_memory(width * height, f"an RLE pattern of x = {width}, y = {height}")
    cells = np.zeros((height, width), dtype=bool)
    body = "".join(lines[1:])
    row = col = 0
    for count_text, tag in _TOKEN.findall(body):
        count = int(count_text) if count_text else 1
        if tag == "!":
            break
        if tag == "$":
            row, col = row + count, 0
        elif tag in "b.":
            col += count
        elif tag == "o":
            if row >= height or col + count > width:
                raise ValueError(f"RLE: cells run past the {width}x{height} header size")
            cells[row, col : col + count] = True
            col += count
        else:
            raise ValueError(f"RLE: state {tag!r} is not a two-state cell")
    return cells, rule


def format_rle(cells: np.ndarray, rule: str = "B3/S23", line_width: int = 70) -> str:
    """Write a bool array as RLE text (trailing dead cells and empty trailing rows dropped)."""
    cells = np.asarray(cells, dtype=bool)
    height, width = cells.shape
    tokens: list[str] = []
    pending_rows = 0
    for r in range(height):
        row = cells[r]
        alive = np.flatnonzero(row)
        if alive.size == 0:
            pending_rows += 1
            continue
        if tokens:  # close the previous row, merging empty rows into one `n$`
            tokens.append(_run(pending_rows + 1, "$"))
        elif pending_rows:
            tokens.append(_run(pending_rows, "$"))
        pending_rows = 0
        row = row[: alive[-1] + 1]
        # Runs of equal values: boundaries where the value changes.
        edges = np.flatnonzero(np.diff(row.astype(np.int8))) + 1
        starts = np.concatenate(([0], edges))
        ends = np.concatenate((edges, [row.size]))
        for start, end in zip(starts, ends, strict=True):
            tokens.append(_run(int(end - start), "o" if row[start] else "b"))
    tokens.append("!")
    lines, current = [], ""
    for token in tokens:
        if len(current) + len(token) > line_width:
            lines.append(current)
            current = ""
        current += token
    lines.append(current)
    return f"x = {width}, y = {height}, rule = {rule}\n" + "\n".join(lines) + "\n"


def _run(count: int, tag: str) -> str:
    return f"{count}{tag}" if count > 1 else tag


def builtin_pattern(name: str) -> np.ndarray:
    """Cells of a built-in pattern by name (see PATTERNS)."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose from {', '.join(sorted(PATTERNS))}")
    return parse_rle(PATTERNS[name])[0]
