"""Regenerate the figures of docs/ca.md: python -m scratch.ca.figures [--out docs/figures]

Writes ca_life_gun.gif, ca_life_acorn.gif, ca_evoloop.gif, ca_soup_entropy.png and
ca_soup_natural.png (each well under 1 MB; the last runs a full 2^17-program soup through its
natural transition, a few minutes; `--only NAME` makes one figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scratch import helpers
from scratch.ca.display import save_gif
from scratch.ca.evoloop import EVOLOOP_COLORS, evoloop_table, run, species13
from scratch.ca.life import PackedLife, place_centered
from scratch.ca.life_rle import builtin_pattern
from scratch.ca.soup import TRANSITION_THRESHOLD, Soup, plot_entropy, show_program

PROG = "python -m scratch.ca.figures"
WHITE_BLACK = [(255, 255, 255), (0, 0, 0)]
LIFE_KEY = [(1, "live cell"), (0, "dead cell")]
# The evoloop's states (Sayama 1999; the genes as in SPECIES_13's comment).
EVOLOOP_KEY = [(0, "0 empty"), (1, "1 core"), (2, "2 sheath"), (7, "7 gene: straight"),
               (4, "4 gene: turn"), (3, "3"), (5, "5"), (6, "6: other signals"),
               (8, "8 dissolving")]


def life_frames(board: np.ndarray, steps: int, every: int, torus: bool) -> list[np.ndarray]:
    life = PackedLife(board, torus=torus)
    frames = [life.cells.astype(np.uint8)]
    for _ in range(steps // every):
        frames.append(life.step(every).cells.astype(np.uint8))
    return frames


def life_captions(frames: list[np.ndarray], every: int) -> list[str]:
    return [f"generation {i * every:,}: {int(f.sum()):,} live cells" for i, f in enumerate(frames)]


def gun_gif(path: Path) -> None:
    board = np.zeros((64, 96), dtype=bool)
    board[2:11, 2:38] = builtin_pattern("gosper-glider-gun")
    frames = life_frames(board, 180, 2, torus=False)
    save_gif(path, frames, WHITE_BLACK, max_pixels=384, captions=life_captions(frames, 2),
             legend=LIFE_KEY)


def acorn_gif(path: Path) -> None:
    """The acorn on a 256x256 torus at 2 pixels per cell."""
    board = place_centered(builtin_pattern("acorn"), 256)
    frames = life_frames(board, 1500, 25, torus=True)
    save_gif(path, frames, WHITE_BLACK, max_pixels=512, captions=life_captions(frames, 25),
             legend=LIFE_KEY)


def evoloop_gif(path: Path) -> None:
    board, table = species13(150), evoloop_table()
    frames = [board]
    for _ in range(60):
        board = run(board, 50, table)
        frames.append(board)
    captions = [f"step {i * 50:,}: {int((f > 0).sum()):,} non-empty cells"
                for i, f in enumerate(frames)]
    save_gif(path, frames, EVOLOOP_COLORS, max_pixels=450, duration_ms=100, captions=captions,
             legend=EVOLOOP_KEY)


def soup_plot(path: Path) -> None:
    """A seeded takeover: 1% of a 16384-program soup starts as a hand-written replicator (a
    natural transition needs thousands of epochs at 2^17 programs; see docs/ca.md)."""
    replicator = b"[[{.>]-]" + b"\x01" * 48 + b"]-]>.{[["
    soup = Soup(16384, seed=1)
    soup.write(slice(0, 164), np.frombuffer(replicator, dtype=np.uint8))
    soup.measure()
    for _ in range(80):
        soup.run_epoch()
        soup.measure()
    plot_entropy(soup, path, "BFF soup, 16384 programs, 1% seeded with a replicator")


def soup_natural_plot(path: Path, seed: int = 2, n_programs: int = 1 << 17,
                      max_epochs: int = 16384, after: int = 1024, every: int = 32) -> None:
    """A natural transition: random programs only, nothing planted. Seed 2 transitions (see
    BENCHMARKS.md); the run goes `after` epochs past it, then lists the commonest programs —
    the replicators that emerged."""
    soup = Soup(n_programs, seed=seed)
    soup.measure()
    while soup.epoch < max_epochs:
        soup.run_epoch()
        if soup.epoch % every == 0:
            soup.measure()
            if soup.transition_epoch is not None and \
                    soup.epoch >= soup.transition_epoch + after:
                break
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, values = zip(*soup.entropy, strict=True)
    fig, (ax, text) = plt.subplots(2, 1, figsize=(9, 5.6), dpi=100,
                                   gridspec_kw={"height_ratios": [1.3, 1]})
    ax.plot(epochs, values, lw=1.5)
    ax.axhline(TRANSITION_THRESHOLD, color="gray", lw=0.8, ls=":",
               label=f"threshold ({TRANSITION_THRESHOLD:g} bit/byte)")
    if soup.transition_epoch is not None:
        ax.axvline(soup.transition_epoch, color="C3", ls="--", lw=1,
                   label=f"transition: epoch {soup.transition_epoch:,}")
    ax.set(xlabel="epoch", ylabel="high-order entropy (bits/byte)",
           title=f"BFF soup, {n_programs:,} random programs, seed {seed}, nothing planted")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    text.set_axis_off()
    top = soup.top_programs(6)
    lines = [f"the commonest programs at epoch {soup.epoch:,} (count, program; '·' = a byte "
             "that is no instruction, '0' = zero):"]
    lines += [f"{count:7,}  {show_program(program)}" for program, count in top]
    text.text(0, 1, "\n".join(lines), family="monospace", fontsize=8.5, va="top")
    fig.tight_layout()
    try:
        helpers.save_figure(fig, path)
    finally:
        plt.close(fig)


FIGURES = {"ca_life_gun.gif": gun_gif, "ca_life_acorn.gif": acorn_gif,
           "ca_evoloop.gif": evoloop_gif, "ca_soup_entropy.png": soup_plot,
           "ca_soup_natural.png": soup_natural_plot}


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--only", choices=sorted(FIGURES), action="append",
                        help="make only this figure (repeatable)")
    args = parser.parse_args(argv)
    for name, make in FIGURES.items():
        if args.only and name not in args.only:
            continue
        make(args.out / name)
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
