"""Von Neumann rule-table cellular automata, and Sayama's evoloop (1999).

A rule table maps (centre, top, right, bottom, left) to the centre's next state; with rotational
symmetry each entry also stands for its three rotations (the four neighbours turned by 90°).
That is enough for Langton's loops (8 states) and Sayama's evoloop (9 states): loops that copy
themselves, collide, and over long runs evolve into smaller, faster-replicating species.

The engine precomputes a dense lookup table (n^5 entries; 59049 bytes for 9 states) and a numba
kernel turns each cell's five states into one index, so a step is five loads and one lookup
per cell. The board is a torus.

CLI: python -m scratch.evoloop --steps 1000 --json out.json [--gif loop.gif]
(also python -m scratch.ca.evoloop)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from numba import njit, prange

from scratch import helpers
from scratch.ca.display import gif_bytes_estimate, progress, save_gif

# Sayama's evoloop transition table: each entry is CTRBL followed by the new centre state,
# rotations implied. (The published rule set, as also shipped with Golly and cellpylib.)
EVOLOOP_TABLE = """
    000012 000043 000122 000152 000212 000242 000422 000452 000752 001022 002141 002171
    002322 011221 012121 012321 012421 012451 012526 012626 012721 012751 013421 013721
    014221 014251 014321 014351 014421 014621 017221 017251 017561 017621 017721 100011
    100121 100211 100244 100277 101211 101244 101277 102021 102111 102121 102131 102211
    102244 102277 102324 102414 102424 102434 102511 102527 102543 102577 102717 102727
    102735 105121 105424 105727 106211 106244 106277 111121 111221 111244 111251 111277
    111621 112121 112131 112151 112221 112244 112277 112321 112424 112434 112527 112543
    112577 112626 112727 112735 113221 113321 115424 115727 116244 116277 122244 122277
    122434 122737 123244 123277 124266 124333 126276 200012 200022 200042 200052 200060
    200071 200122 200152 200212 200222 200232 200242 200260 200272 200324 200423 200452
    200545 200575 200620 200722 200752 201022 201122 201222 201422 201722 202022 202032
    202052 202065 202073 202122 202152 202212 202222 202232 202323 202422 202452 202525
    202620 202650 202722 202752 203122 203222 203422 203452 203722 204122 204222 204422
    205122 205425 205725 206125 206212 206425 206725 207122 207222 207722 211222 212222
    212232 212242 212272 212323 213222 214222 216222 217222 222242 222272 222342 222372
    222432 222442 222732 222772 223243 223273 300013 300022 300032 300043 300074 300123
    300322 300421 301021 301250 302123 302423 302521 302723 303321 312123 312423 312521
    312723 324243 324251 324273 325271 327273 400001 400021 401020 401120 401220 401250
    401620 402120 402150 402221 402321 402626 403120 403221 500025 500125 500215 500232
    500245 500275 500425 500725 502022 502052 502125 502152 502425 502725 503120 602022
    602122 602220 602422 602722 612220 622240 622270 701020 701120 701220 701250 701620
    702120 702150 702221 702320 702626 703120
"""

# Sayama's species-13 loop: a 13-cell-sided square sheath (state 2) around a core that carries
# the genes (7 = straight, 4 = turn, each followed by 0 and led by 1) and an arm to the right.
SPECIES_13 = """
0222222222222222000000000000000
2017017017014014200000000000000
2722222222222220200000000000000
2120000000000021200000000000000
2020000000000021200000000000000
2720000000000021200000000000000
2120000000000021200000000000000
2020000000000021200000000000000
2720000000000021200000000000000
2120000000000021200000000000000
2020000000000021200000000000000
2720000000000021200000000000000
2120000000000021200000000000000
2020000000000021200000000000000
2722222222222221222222222222220
2107107107107107111111111111112
0222222222222222222222222222220
"""

EVOLOOP_COLORS = [
    (0, 0, 0), (0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 255, 0),
    (255, 0, 255), (255, 255, 255), (0, 255, 255), (255, 128, 0),
]


def parse_table(text: str) -> list[tuple[int, ...]]:
    """Entries 'CTRBLN' (one digit per state) into tuples (c, t, r, b, l, new)."""
    return [tuple(int(ch) for ch in word) for word in text.split()]


def build_table(
    entries: Iterable[tuple[int, ...]],
    n_states: int,
    rotations: bool = True,
    fallback: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Dense table indexed by ((((c*n + t)*n + r)*n + b)*n + l).

    Neighbourhoods no entry covers get fallback(keys) where keys is an (m, 5) array of CTRBL
    rows; without a fallback they are an error at build time, like an incomplete rule file.
    """
    n = n_states
    table = np.full(n**5, 255, dtype=np.uint8)
    for c, t, r, b, l, new in entries:
        sides = [t, r, b, l]
        for turn in range(4 if rotations else 1):
            t2, r2, b2, l2 = sides[-turn:] + sides[:-turn] if turn else sides
            table[(((c * n + t2) * n + r2) * n + b2) * n + l2] = new
    missing = np.flatnonzero(table == 255)
    if missing.size:
        if fallback is None:
            raise ValueError(f"{missing.size} neighbourhoods have no rule")
        keys = np.stack(np.unravel_index(missing, (n,) * 5), axis=1)
        table[missing] = fallback(keys)
    return table


def evoloop_fallback(keys: np.ndarray) -> np.ndarray:
    """Sayama's completion of the evoloop table for neighbourhoods the table leaves open.

    State 8 is the dissolving state that lets stuck structures decay: 8 always becomes 0; next
    to an 8, 0 and 1 turn into 8 if any neighbour is in 2..7 (the dissolution spreads along the
    structure) and stay otherwise, 2, 3, 5 become 0, and 4, 6, 7 become 1; anything else left
    undefined: 0 stays 0 and 1..7 become 8.
    """
    centre, sides = keys[:, 0], keys[:, 1:]
    near8 = (sides == 8).any(axis=1)
    near_active = ((sides >= 2) & (sides <= 7)).any(axis=1)
    out = np.where(centre == 0, 0, 8)
    out = np.where(near8 & (centre <= 1), np.where(near_active, 8, centre), out)
    out = np.where(near8 & np.isin(centre, (2, 3, 5)), 0, out)
    out = np.where(near8 & np.isin(centre, (4, 6, 7)), 1, out)
    out = np.where(centre == 8, 0, out)
    return out.astype(np.uint8)


def evoloop_table() -> np.ndarray:
    return build_table(parse_table(EVOLOOP_TABLE), 9, rotations=True, fallback=evoloop_fallback)


def species13(size: int = 100, row: int | None = None, col: int | None = None) -> np.ndarray:
    """A size x size board with the species-13 loop (centred unless row/col are given)."""
    loop = np.array([[int(ch) for ch in line] for line in SPECIES_13.split()], dtype=np.uint8)
    h, w = loop.shape
    if size < max(h, w) + 2:
        raise ValueError(f"board must be at least {max(h, w) + 2} cells wide")
    board = np.zeros((size, size), dtype=np.uint8)
    top = (size - h) // 2 if row is None else row
    left = (size - w) // 2 if col is None else col
    board[top : top + h, left : left + w] = loop
    return board


@njit(parallel=True, cache=True)
def _step(cur, nxt, table, n):
    h, w = cur.shape
    for r in prange(h):
        up, dn = (r - 1) % h, (r + 1) % h
        for c in range(w):
            left = c - 1 if c > 0 else w - 1
            right = c + 1 if c < w - 1 else 0
            index = (((np.int64(cur[r, c]) * n + cur[up, c]) * n + cur[r, right]) * n
                     + cur[dn, c]) * n + cur[r, left]
            nxt[r, c] = table[index]


@njit(cache=True)
def _run(board, table, n, steps):
    cur = board.copy()
    nxt = np.empty_like(cur)
    for _ in range(steps):
        _step(cur, nxt, table, n)
        cur, nxt = nxt, cur
    return cur


def run(
    board: np.ndarray, steps: int, table: np.ndarray | None = None, n_states: int = 9
) -> np.ndarray:
    """The board after `steps` generations of the rule table (default: the evoloop)."""
    table = evoloop_table() if table is None else table
    board = np.ascontiguousarray(board, dtype=np.uint8)
    if board.max(initial=0) >= n_states:
        raise ValueError(f"board has states >= {n_states}")
    return _run(board, table, n_states, steps)


def count_loops(board: np.ndarray) -> int:
    """Loops on the board, counted by their hollow cores: regions of state-0 cells (4-connected)
    cut off from the empty outside (the largest such region) with at least 4 cells, so the
    single 0s between genes in a loop's core do not count."""
    from scipy import ndimage  # 0.35 s to import, for this one analysis function

    labels, n = ndimage.label(board == 0)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= 4).sum()) - 1  # minus the outside


PROG = "python -m scratch.evoloop"


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=helpers.int_range(0), required=True,
                        help="generations to run")
    parser.add_argument("--json", type=Path, required=True, help="write {steps, state_counts} here")
    parser.add_argument("--gif", type=Path, help="also write an animated GIF")
    parser.add_argument("--size", type=helpers.int_range(1), default=200,
                        help="torus side in cells")
    parser.add_argument("--frames", type=helpers.int_range(1), default=100,
                        help="GIF frames (spread over the run)")
    args = parser.parse_args(argv)
    every = max(1, args.steps // args.frames)
    try:
        n_frames = -(-args.steps // every) + 1 if args.gif else 0
        # The board and its next state (one byte per cell each), plus the kept GIF frames.
        helpers.check_memory(2 * args.size**2 + gif_bytes_estimate((args.size,) * 2, n_frames),
                             f"a {args.size}x{args.size} board (--size {args.size})")
        board = species13(args.size)
    except ValueError as error:
        raise helpers.UsageError(error) from None

    table = evoloop_table()
    frames = [board]
    done = 0
    with progress(total=args.steps, desc="evoloop") as bar:
        while done < args.steps:
            chunk = min(every, args.steps - done)
            board = run(board, chunk, table)
            done += chunk
            bar.update(chunk)
            if args.gif:
                frames.append(board)
    counts = np.bincount(board.ravel(), minlength=9)[:9]
    if args.gif:
        save_gif(args.gif, frames, EVOLOOP_COLORS, max_pixels=400)
    helpers.write_json(args.json, {"steps": args.steps, "state_counts": [int(c) for c in counts]},
                       indent=None)
    print(f"{args.steps} steps on a {args.size}x{args.size} torus: state counts {counts.tolist()}")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
