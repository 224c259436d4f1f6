"""Benchmarks for scratch/ life, evoloop and soup, side by side in one run.

    python bench/bench_ca.py                 # Life, evoloop, BFF throughput (a few minutes)
    python bench/bench_ca.py --transitions 8 # optional: fraction of seeds (2^17 programs) that
                                             # transition within 16k epochs (hours; not in CI)

Prints one markdown table (the BENCHMARKS.md section). Throughput is the best of a few repeats,
since the machine may be shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_rate(work, units: float, repeats: int = 3) -> float:
    """units / seconds of the fastest of `repeats` calls to work()."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return units / best


def bench_life(size: int = 2048) -> list[tuple[str, str, str]]:
    import numba
    from scipy.signal import convolve2d

    from scratch.ca.life import LIFE, PackedLife, step_reference

    cells = np.random.default_rng(0).random((size, size)) < 0.3
    n_cells = size * size
    rows = []

    def packed(engine: str, steps: int, threads: int | None = None):
        life = PackedLife(cells, engine=engine).step(1)  # compile / warm up
        if threads:
            numba.set_num_threads(threads)
        rate = best_rate(lambda: life.step(steps), n_cells * steps)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        return rate

    kernel = np.ones((3, 3), dtype=np.uint8)
    kernel[1, 1] = 0

    def convolve_step(board):
        counts = convolve2d(board, kernel, mode="same", boundary="wrap")
        return ((counts == 3) | (board.astype(bool) & (counts == 2))).astype(np.uint8)

    board = cells.astype(np.uint8)
    scipy_rate = best_rate(lambda: convolve_step(board), n_cells, repeats=2)
    numba_rate = packed("numba", 200)
    numba_one = packed("numba", 100, threads=1)
    numpy_rate = packed("numpy", 20)
    reference_rate = best_rate(lambda: step_reference(cells, LIFE, True), n_cells, repeats=2)
    threads = numba.config.NUMBA_NUM_THREADS
    g = 1e9
    rows.append((f"Life {size}² torus, bit-packed numba ({threads} threads)",
                 f"{numba_rate / g:.2f} G cell-updates/s", f"{numba_rate / scipy_rate:.0f}x convolve2d"))
    rows.append((f"Life {size}² torus, bit-packed numba (1 thread)",
                 f"{numba_one / g:.2f} G cell-updates/s", f"{numba_one / scipy_rate:.0f}x convolve2d"))
    rows.append((f"Life {size}² torus, bit-packed numpy only", f"{numpy_rate / g:.2f} G cell-updates/s",
                 f"{numpy_rate / scipy_rate:.0f}x convolve2d"))
    rows.append((f"Life {size}² torus, reference (numpy int counts)",
                 f"{reference_rate / g:.3f} G cell-updates/s", f"{reference_rate / scipy_rate:.1f}x convolve2d"))
    rows.append((f"Life {size}² torus, scipy.signal.convolve2d (wrap)",
                 f"{scipy_rate / g:.3f} G cell-updates/s", "1x"))
    return rows


def bench_evoloop(size: int = 100) -> list[tuple[str, str, str]]:
    import cellpylib

    from scratch.ca.evoloop import evoloop_table, run, species13

    board = species13(size)
    table = evoloop_table()
    run(board, 1, table)  # compile
    theirs_steps = 30
    rule = cellpylib.Evoloop()

    def cellpylib_run():
        cellpylib.evolve2d(board[None].astype(np.int32), timesteps=theirs_steps + 1,
                           apply_rule=rule, neighbourhood="von Neumann", memoize=True)

    theirs = best_rate(cellpylib_run, theirs_steps, repeats=1)
    ours = best_rate(lambda: run(board, 3000, table), 3000)
    return [(f"Evoloop {size}² torus from species 13, rule-table numba",
             f"{ours:,.0f} steps/s", f"{ours / theirs:,.0f}x cellpylib"),
            (f"Evoloop {size}² torus, cellpylib evolve2d (memoize=True)",
             f"{theirs:,.1f} steps/s", "1x")]


def bench_soup(n_programs: int = 1 << 17, epochs: int = 30) -> list[tuple[str, str, str]]:
    from scratch.ca.soup import Soup

    soup = Soup(n_programs, seed=0)
    soup.run_epoch()  # compile
    start = time.perf_counter()
    for _ in range(epochs):
        soup.run_epoch()
    rate = epochs / (time.perf_counter() - start)
    start = time.perf_counter()
    soup.measure()
    entropy_s = time.perf_counter() - start
    return [(f"BFF soup, {n_programs} programs, before a transition", f"{rate:.1f} epochs/s",
             f"16k epochs in {16384 / rate / 60:.1f} min; entropy sample {entropy_s * 1000:.0f} ms")]


def bench_transitions(seeds: int, n_programs: int = 1 << 17, max_epochs: int = 16384) -> list:
    from scratch.ca.soup import Soup

    hits = []
    for seed in range(seeds):
        soup = Soup(n_programs, seed=seed)
        while soup.epoch < max_epochs:
            soup.run_epoch()
            if soup.epoch % 128 == 0:
                soup.measure()
                if soup.transition_epoch is not None:
                    break
        hits.append(soup.transition_epoch)
        print(f"seed {seed}: transition at {soup.transition_epoch}", file=sys.stderr)
    frac = sum(h is not None for h in hits) / seeds
    return [(f"BFF transitions within {max_epochs} epochs ({n_programs} programs)",
             f"{frac:.0%} of {seeds} seeds", f"epochs: {hits}")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=0, metavar="SEEDS",
                        help="also run SEEDS full soups to count natural transitions (slow)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["life", "evoloop", "soup"])
    args = parser.parse_args()
    rows = []
    if "life" not in args.skip:
        rows += bench_life()
    if "evoloop" not in args.skip:
        rows += bench_evoloop()
    if "soup" not in args.skip:
        rows += bench_soup()
    if args.transitions:
        rows += bench_transitions(args.transitions)
    print("| what | throughput | ratio / note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
