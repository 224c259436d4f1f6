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
    for name, rate, digits in [
        (f"bit-packed numba ({threads} threads)", numba_rate, 2),
        ("bit-packed numba (1 thread)", numba_one, 2),
        ("bit-packed numpy only", numpy_rate, 2),
        ("reference (numpy int counts)", reference_rate, 3),
    ]:
        ratio = rate / scipy_rate
        rows.append((f"Life {size}² torus, {name}", f"{rate / g:.{digits}f} G cell-updates/s",
                     f"{ratio:.0f}x convolve2d" if ratio >= 2 else f"{ratio:.1f}x convolve2d"))
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


def bench_soup(n_programs: int = 1 << 17, epochs: int = 512) -> list[tuple[str, str, str]]:
    """What a user runs: `python -m scratch.soup --epochs 512 --json OUT` at the CLI's defaults
    (2^17 programs, the default entropy schedule), from epoch 0, its own epochs/s. Then three
    soups of the same seed advanced side by side in blocks of 16 epochs (so load from other
    jobs hits all three alike): no entropy samples, the default samples, and the previous
    default's (the whole soup through brotli every 4 epochs)."""
    import json
    import tempfile

    from scratch.ca import soup as bff

    bff.Soup(64, seed=0).run_epoch()  # compile (or load numba's cache) outside the timings
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "soup.json"
        bff.main(["--epochs", str(epochs), "--json", str(out), "--top", "0"])
        summary = json.loads(out.read_text())
    cli_rate, samples = summary["epochs_per_second"], len(summary["entropy"])

    every = bff.default_entropy_every(epochs)
    variants = {  # name: (epochs between samples, how a sample is taken)
        "alone": (0, None),
        "default": (every, lambda soup: soup.measure()),
        "previous": (4, lambda soup: bff.high_order_entropy(soup.programs)),
    }
    soups = {name: bff.Soup(n_programs, seed=0) for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for _ in range(0, epochs, 16):
        for name, (gap, measure) in variants.items():
            soup, start = soups[name], time.perf_counter()
            for _ in range(16):
                soup.run_epoch()
                if gap and soup.epoch % gap == 0:
                    measure(soup)
            seconds[name] += time.perf_counter() - start
    rate = {name: epochs / seconds[name] for name in variants}
    start = time.perf_counter()
    soups["alone"].measure()
    sample_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    bff.high_order_entropy(soups["alone"].programs)
    whole_ms = (time.perf_counter() - start) * 1000
    name = f"BFF soup, {n_programs} programs, epochs 0-{epochs}"
    return [
        (f"{name}: `python -m scratch.soup --epochs {epochs}` (defaults, {samples} entropy "
         "samples)", f"**{cli_rate:.1f} epochs/s**", "what a user gets"),
        (f"{name}, side by side: the soup alone", f"{rate['alone']:.1f} epochs/s", "1x"),
        (f"{name}, side by side: default samples (every {every} epochs, 1 MiB of the soup)",
         f"{rate['default']:.1f} epochs/s",
         f"{rate['default'] / rate['alone']:.2f}x; one sample {sample_ms:.0f} ms"),
        (f"{name}, side by side: previous default (whole soup every 4 epochs)",
         f"{rate['previous']:.1f} epochs/s",
         f"{rate['previous'] / rate['alone']:.2f}x; one sample {whole_ms:.0f} ms"),
    ]


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
