"""Life-like cellular automata: any B/S rule, on a torus or a bounded board.

Two engines that must agree cell for cell:
- `step_reference`: plain numpy on a bool board (neighbour counts as small integers).
- `PackedLife`: 64 cells per uint64 word; neighbour counts are added bit-parallel with a
  carry-save adder, so one machine instruction updates 64 cells. numba runs it over rows in
  parallel; a numpy-only fallback runs the same adder on whole arrays.

Bit layout: row r, column c lives in word c // 64, bit c % 64 (bit 0 = leftmost column of the
word). Columns past the board width in the last word are always 0.

CLI: python -m scratch.life --pattern glider --size 64 --steps 100 --json out.json [--gif g.gif]
(also python -m scratch.ca.life)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratch import helpers
from scratch.ca.display import gif_bytes_estimate, progress, save_gif
from scratch.ca.life_rle import PATTERNS, builtin_pattern, parse_rle

try:  # numba is optional: without it the numpy bit-packed engine is used.
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

U64 = np.uint64
ALL_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class Rule:
    """A Life-like rule: a dead cell with n live neighbours is born if n in birth; a live one
    survives if n in survive."""

    birth: frozenset[int]
    survive: frozenset[int]

    def __str__(self) -> str:
        return "B" + "".join(map(str, sorted(self.birth))) + "/S" + "".join(
            map(str, sorted(self.survive))
        )


def parse_rule(text: str) -> Rule:
    """Parse 'B3/S23' (any case, either order) or the older 'S/B' form '23/3'."""
    spec = text.strip().upper()
    named = re.fullmatch(r"B([0-8]*)/S([0-8]*)|S([0-8]*)/B([0-8]*)", spec)
    if named:
        birth = named.group(1) if named.group(1) is not None else named.group(4)
        survive = named.group(2) if named.group(2) is not None else named.group(3)
    else:
        old = re.fullmatch(r"([0-8]*)/([0-8]*)", spec)
        if not old:
            raise ValueError(f"bad rule {text!r}: expected like B3/S23")
        survive, birth = old.group(1), old.group(2)
    return Rule(frozenset(int(d) for d in birth), frozenset(int(d) for d in survive))


LIFE = parse_rule("B3/S23")


# ---------------------------------------------------------------- reference engine


def step_reference(cells: np.ndarray, rule: Rule = LIFE, torus: bool = True) -> np.ndarray:
    """One generation on a bool board; off-board cells are dead when not a torus."""
    padded = np.pad(cells, 1, mode="wrap" if torus else "constant").astype(np.uint8)
    h, w = cells.shape
    counts = sum(
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    born = np.isin(counts, list(rule.birth))
    survives = np.isin(counts, list(rule.survive))
    return np.where(cells, survives, born)


# ---------------------------------------------------------------- packing


def pack(cells: np.ndarray) -> np.ndarray:
    """Bool board (H, W) -> uint64 words (H, ceil(W/64)), little-endian bit order."""
    h, w = cells.shape
    n_words = (w + 63) // 64
    padded = np.zeros((h, n_words * 64), dtype=bool)
    padded[:, :w] = cells
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(U64)


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    """uint64 words (H, NW) -> bool board (H, width)."""
    as_bytes = np.ascontiguousarray(words.astype("<u8")).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :width].astype(bool)


def _last_word_mask(width: int) -> np.uint64:
    used = width % 64
    return ALL_ONES if used == 0 else U64((1 << used) - 1)


def _rule_masks(rule: Rule) -> np.ndarray:
    """18 words: [0..8] all-ones where n births, [9..17] where n survives (branch-free rule)."""
    masks = np.zeros(18, dtype=U64)
    for n in range(9):
        masks[n] = ALL_ONES if n in rule.birth else 0
        masks[9 + n] = ALL_ONES if n in rule.survive else 0
    return masks


# ---------------------------------------------------------------- numpy bit-packed engine


def _west_east_np(a: np.ndarray, width: int, torus: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's west and east neighbour, aligned to the cell's own bit."""
    one, top = U64(1), U64(63)
    west = a << one
    west[:, 1:] |= a[:, :-1] >> top
    east = a >> one
    east[:, :-1] |= a[:, 1:] << top
    if torus:  # column 0's west is column W-1 and vice versa
        last_bit = U64((width - 1) % 64)
        west[:, 0] |= (a[:, -1] >> last_bit) & one
        east[:, -1] |= (a[:, 0] & one) << last_bit
    return west, east


def _with_ghost_rows(a: np.ndarray, torus: bool) -> np.ndarray:
    """The board with one extra row above and below: the wrapped-around rows on a torus, zeros
    when bounded. Each row's upper and lower neighbours are then plain slices (views), not
    copies."""
    g = np.empty((a.shape[0] + 2, a.shape[1]), dtype=a.dtype)
    g[1:-1] = a
    g[0], g[-1] = (a[-1], a[0]) if torus else (0, 0)
    return g


def _apply_rule_np(c, b0, b1, b2, b3, rule: Rule):
    """Next state from the centre bit and the 4-bit neighbour count, built from only the terms
    the rule needs (numpy pays per array operation, so fewer terms is faster)."""
    lo = {0: lambda: ~b0 & ~b1, 1: lambda: b0 & ~b1, 2: lambda: ~b0 & b1, 3: lambda: b0 & b1}
    hi = {0: lambda: ~(b2 | b3), 1: lambda: b2, 2: lambda: b3}
    cache: dict = {}

    def equals(n: int) -> np.ndarray:
        key = ("lo", n & 3)
        if key not in cache:
            cache[key] = lo[n & 3]()
        hkey = ("hi", n >> 2)
        if hkey not in cache:
            cache[hkey] = hi[n >> 2]()
        return cache[key] & cache[hkey]

    both = rule.birth & rule.survive
    out = np.zeros_like(c)
    for n in both:
        out |= equals(n)
    for n in rule.birth - both:
        out |= ~c & equals(n)
    for n in rule.survive - both:
        out |= c & equals(n)
    return out


def step_packed_numpy(a: np.ndarray, width: int, rule: Rule, torus: bool) -> np.ndarray:
    """One generation of the bit-packed board with whole-array numpy operations.

    numpy pays for every pass over the board, so this counts passes: rows are padded once
    instead of rolled, and Life itself gets a four-operation rule.
    """
    g = _with_ghost_rows(a, torus)
    west, east = _west_east_np(g, width, torus)
    # Per row: a full adder of (west, centre, east) gives the 3-cell row sum as (sum, carry);
    # the centre row uses only west + east.
    west_xor_centre = west ^ g
    row_sum = west_xor_centre ^ east
    row_carry = (west & g) | (east & west_xor_centre)
    inner = slice(1, -1)
    mid_sum, mid_carry = west[inner] ^ east[inner], west[inner] & east[inner]
    b0, b1, b2, b3 = _add_three_pairs(row_sum[:-2], row_carry[:-2], mid_sum, mid_carry,
                                      row_sum[2:], row_carry[2:])
    if rule == LIFE:  # born on 3, survives on 2 or 3: count in {2, 3} (b1 set, b2 and b3 clear;
        # b1 rules out 8) and (odd count or alive)
        out = b1 & ~b2 & (b0 | a)
    else:
        out = _apply_rule_np(a, b0, b1, b2, b3, rule)
    out[:, -1] &= _last_word_mask(width)
    return out


def _add_three_pairs(s1, c1, s2, c2, s3, c3):
    """(s1 + 2c1) + (s2 + 2c2) + (s3 + 2c3) as 4 bit-planes (count 0..8)."""
    b0 = s1 ^ s2 ^ s3
    carry = (s1 & s2) | (s3 & (s1 ^ s2))
    x = c1 ^ c2 ^ c3
    y = (c1 & c2) | (c3 & (c1 ^ c2))
    b1 = x ^ carry
    z = x & carry
    return b0, b1, y ^ z, y & z


# ---------------------------------------------------------------- numba bit-packed engine

if numba is not None:

    @njit(cache=True)
    def _next_word(uw, ux, ue, mw, mx, me, dw, dx, de, masks):
        """Next state of 64 cells from their 3x3 neighbourhood words (w/x/e = west/centre/east
        of the up/middle/down rows): the same carry-save adder as the numpy engine."""
        us = uw ^ ux ^ ue
        uc = (uw & ux) | (ue & (uw ^ ux))
        ms = mw ^ me
        mc = mw & me
        ds = dw ^ dx ^ de
        dc = (dw & dx) | (de & (dw ^ dx))
        b0 = us ^ ms ^ ds
        carry = (us & ms) | (ds & (us ^ ms))
        x = uc ^ mc ^ dc
        y = (uc & mc) | (dc & (uc ^ mc))
        b1 = x ^ carry
        z = x & carry
        b2 = y ^ z
        b3 = y & z
        # count == n is lo[n % 4] & hi[n // 4]; the masks pick the rule's counts branch-free.
        l0 = ~(b0 | b1)
        l1 = b0 & ~b1
        l2 = b1 & ~b0
        l3 = b0 & b1
        h0 = ~(b2 | b3)
        e0, e1, e2, e3 = l0 & h0, l1 & h0, l2 & h0, l3 & h0
        e4, e5, e6, e7 = l0 & b2, l1 & b2, l2 & b2, l3 & b2
        born = (
            (e0 & masks[0]) | (e1 & masks[1]) | (e2 & masks[2]) | (e3 & masks[3])
            | (e4 & masks[4]) | (e5 & masks[5]) | (e6 & masks[6]) | (e7 & masks[7])
            | (b3 & masks[8])
        )
        survive = (
            (e0 & masks[9]) | (e1 & masks[10]) | (e2 & masks[11]) | (e3 & masks[12])
            | (e4 & masks[13]) | (e5 & masks[14]) | (e6 & masks[15]) | (e7 & masks[16])
            | (b3 & masks[17])
        )
        return (born & ~mx) | (survive & mx)

    @njit(cache=True)
    def _edge_row(cur, row, keep, k, n_words, wrap_bit):
        """(west, centre, east) words of word k of a row, at a row end where the neighbour word
        is the other end of the row (torus, wrap_bit = (W-1) % 64) or nothing (wrap_bit 64)."""
        one, top = np.uint64(1), np.uint64(63)
        x = cur[row, k] & keep
        if k > 0:
            west_carry = cur[row, k - 1] >> top
        elif wrap_bit < 64:
            west_carry = (cur[row, n_words - 1] >> wrap_bit) & one
        else:
            west_carry = np.uint64(0)
        if k < n_words - 1:
            east_carry = cur[row, k + 1] << top
        elif wrap_bit < 64:
            east_carry = (cur[row, 0] & one) << wrap_bit
        else:
            east_carry = np.uint64(0)
        return (x << one) | (west_carry & keep), x, (x >> one) | (east_carry & keep)

    @njit(cache=True)
    def _edge_word(cur, ru, r, rd, um, dm, k, n_words, wrap_bit, masks):
        uw, ux, ue = _edge_row(cur, ru, um, k, n_words, wrap_bit)
        mw, mx, me = _edge_row(cur, r, ALL_ONES, k, n_words, wrap_bit)
        dw, dx, de = _edge_row(cur, rd, dm, k, n_words, wrap_bit)
        return _next_word(uw, ux, ue, mw, mx, me, dw, dx, de, masks)

    @njit(parallel=True, cache=True)
    def _step_packed_numba(cur, nxt, width, torus, masks):
        h, n_words = cur.shape
        one, top = np.uint64(1), np.uint64(63)
        used = width % 64
        last_mask = ALL_ONES if used == 0 else (one << np.uint64(used)) - one
        # Torus carries: column W-1 is column 0's west neighbour and column 0 is column W-1's
        # east one (wrap bit positions; 64 means "no wrap": bounded board).
        wrap_bit = np.uint64((width - 1) % 64) if torus else np.uint64(64)
        for r in prange(h):
            ru = (r - 1) % h
            rd = (r + 1) % h
            # Bounded board: rows off the board read as 0 via an all-zero mask (no branches).
            um = ALL_ONES if (torus or r > 0) else np.uint64(0)
            dm = ALL_ONES if (torus or r < h - 1) else np.uint64(0)
            for k in range(1, n_words - 1):
                ux, mx, dx = cur[ru, k] & um, cur[r, k], cur[rd, k] & dm
                nxt[r, k] = _next_word(
                    (ux << one) | ((cur[ru, k - 1] & um) >> top), ux,
                    (ux >> one) | ((cur[ru, k + 1] & um) << top),
                    (mx << one) | (cur[r, k - 1] >> top), mx,
                    (mx >> one) | (cur[r, k + 1] << top),
                    (dx << one) | ((cur[rd, k - 1] & dm) >> top), dx,
                    (dx >> one) | ((cur[rd, k + 1] & dm) << top),
                    masks,
                )
            nxt[r, 0] = _edge_word(cur, ru, r, rd, um, dm, 0, n_words, wrap_bit, masks)
            if n_words > 1:
                nxt[r, n_words - 1] = _edge_word(
                    cur, ru, r, rd, um, dm, n_words - 1, n_words, wrap_bit, masks
                )
            nxt[r, n_words - 1] &= last_mask

    @njit(cache=True)
    def _run_packed_numba(words, width, torus, masks, steps):
        cur = words.copy()
        nxt = np.empty_like(cur)
        for _ in range(steps):
            _step_packed_numba(cur, nxt, width, torus, masks)
            cur, nxt = nxt, cur
        return cur


# ---------------------------------------------------------------- board


class PackedLife:
    """A Life-like board held bit-packed. engine: 'numba' (default when installed) or 'numpy'."""

    def __init__(
        self, cells: np.ndarray, rule: Rule | str = LIFE, torus: bool = True, engine: str = "auto"
    ) -> None:
        cells = np.asarray(cells, dtype=bool)
        if cells.ndim != 2 or min(cells.shape) < 1:
            raise ValueError("cells must be a non-empty 2-D array")
        if engine == "auto":
            engine = "numba" if numba is not None else "numpy"
        if engine not in ("numba", "numpy"):
            raise ValueError(f"unknown engine {engine!r}")
        if engine == "numba" and numba is None:
            raise ValueError("engine 'numba' needs numba installed")
        self.rule = parse_rule(rule) if isinstance(rule, str) else rule
        self.torus, self.engine = torus, engine
        self.height, self.width = cells.shape
        self.words = pack(cells)
        self.generation = 0
        self._masks = tuple(_rule_masks(self.rule))

    def step(self, steps: int = 1) -> PackedLife:
        if self.engine == "numba":
            self.words = _run_packed_numba(self.words, self.width, self.torus, self._masks, steps)
        else:
            for _ in range(steps):
                self.words = step_packed_numpy(self.words, self.width, self.rule, self.torus)
        self.generation += steps
        return self

    @property
    def cells(self) -> np.ndarray:
        return unpack(self.words, self.width)

    @property
    def population(self) -> int:
        return int(np.bitwise_count(self.words).sum())


def place_centered(pattern: np.ndarray, size: int) -> np.ndarray:
    """A size x size board with the pattern in the middle."""
    ph, pw = pattern.shape
    if ph > size or pw > size:
        raise ValueError(f"pattern {pw}x{ph} does not fit a {size}x{size} board")
    board = np.zeros((size, size), dtype=bool)
    top, left = (size - ph) // 2, (size - pw) // 2
    board[top : top + ph, left : left + pw] = pattern
    return board


# ---------------------------------------------------------------- CLI

PROG = "python -m scratch.life"


def board_bytes(size: int, engine: str, gif_frames: int = 0) -> int:
    """Peak memory of a run on a size x size board: the bool board and the engine's work arrays
    (bit-packing, the adder's temporaries and unpacking ~4 bytes per cell; the reference
    engine's integer counts ~8),
    plus the frames a GIF keeps (one byte per cell each)."""
    cells = size * size
    per_cell = 8 if engine == "reference" else 4
    return cells * per_cell + gif_bytes_estimate((size, size), gif_frames)


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pattern", choices=sorted(PATTERNS), metavar="NAME",
                        help="built-in pattern: " + ", ".join(sorted(PATTERNS)))
    source.add_argument("--rle", type=Path, help="RLE pattern file (Golly/LifeWiki format)")
    parser.add_argument("--size", type=helpers.int_range(1), required=True,
                        help="board is SIZE x SIZE cells")
    parser.add_argument("--steps", type=helpers.int_range(0), required=True,
                        help="generations to run")
    parser.add_argument("--json", type=Path, required=True, help="write {population, steps} here")
    parser.add_argument("--gif", type=Path, help="also write an animated GIF of the run")
    parser.add_argument("--rule", help="B/S rule (default: the RLE's rule, else B3/S23)")
    parser.add_argument("--bounded", action="store_true", help="dead cells off-board, not a torus")
    parser.add_argument("--engine", choices=["auto", "numba", "numpy", "reference"], default="auto")
    parser.add_argument("--frames", type=helpers.int_range(1), default=100,
                        help="GIF frames (spread over the run)")
    args = parser.parse_args(argv)

    try:
        every = max(1, args.steps // args.frames)
        n_frames = -(-args.steps // every) + 1 if args.gif else 0
        helpers.check_memory(board_bytes(args.size, args.engine, n_frames),
                             f"a {args.size}x{args.size} board (--size {args.size})")
        if args.pattern:
            pattern, rle_rule = builtin_pattern(args.pattern), None
        else:
            pattern, rle_rule = parse_rle(args.rle.read_text(), max_size=args.size)
        rule = parse_rule(args.rule or rle_rule or "B3/S23")
        board = place_centered(pattern, args.size)
    except ValueError as error:
        raise helpers.UsageError(error) from None

    frames: list[np.ndarray] = []
    torus = not args.bounded
    if args.engine == "reference":
        cells = board
        for gen in progress(range(args.steps), "life"):
            if args.gif and gen % every == 0:
                frames.append(cells.view(np.uint8))
            cells = step_reference(cells, rule, torus)
        population = int(cells.sum())
    else:
        life = PackedLife(board, rule, torus, args.engine)
        del board
        done = 0
        with progress(total=args.steps, desc="life") as bar:
            while done < args.steps:
                if args.gif:
                    frames.append(life.cells.view(np.uint8))
                chunk = min(every if args.gif else max(1, args.steps // 100), args.steps - done)
                life.step(chunk)
                done += chunk
                bar.update(chunk)
        cells, population = life.cells, life.population
    if args.gif:
        frames.append(cells.view(np.uint8))
        save_gif(args.gif, frames, palette=[(255, 255, 255), (0, 0, 0)])
    helpers.write_json(args.json, {"population": population, "steps": args.steps}, indent=None)
    print(f"population {population} after {args.steps} generations ({rule}, "
          f"{'torus' if torus else 'bounded'} {args.size}x{args.size})")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
