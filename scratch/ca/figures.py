"""Regenerate the figures of docs/ca.md: python -m scratch.ca.figures [--out docs/figures]

Writes ca_life_gun.gif, ca_life_acorn.gif, ca_evoloop.gif and ca_soup_entropy.png (each well
under 1 MB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scratch import helpers
from scratch.ca.display import save_gif
from scratch.ca.evoloop import EVOLOOP_COLORS, evoloop_table, run, species13
from scratch.ca.life import PackedLife, place_centered
from scratch.ca.life_rle import builtin_pattern
from scratch.ca.soup import Soup, plot_entropy

PROG = "python -m scratch.ca.figures"
WHITE_BLACK = [(255, 255, 255), (0, 0, 0)]


def life_frames(board: np.ndarray, steps: int, every: int, torus: bool) -> list[np.ndarray]:
    life = PackedLife(board, torus=torus)
    frames = [life.cells.astype(np.uint8)]
    for _ in range(steps // every):
        frames.append(life.step(every).cells.astype(np.uint8))
    return frames


def gun_gif(path: Path) -> None:
    board = np.zeros((64, 96), dtype=bool)
    board[2:11, 2:38] = builtin_pattern("gosper-glider-gun")
    save_gif(path, life_frames(board, 180, 2, torus=False), WHITE_BLACK, max_pixels=384)


def acorn_gif(path: Path) -> None:
    board = place_centered(builtin_pattern("acorn"), 256)
    save_gif(path, life_frames(board, 1500, 25, torus=True), WHITE_BLACK, max_pixels=256)


def evoloop_gif(path: Path) -> None:
    board, table = species13(150), evoloop_table()
    frames = [board]
    for _ in range(60):
        board = run(board, 50, table)
        frames.append(board)
    save_gif(path, frames, EVOLOOP_COLORS, max_pixels=300, duration_ms=100)


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


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    for name, make in [("ca_life_gun.gif", gun_gif), ("ca_life_acorn.gif", acorn_gif),
                       ("ca_evoloop.gif", evoloop_gif), ("ca_soup_entropy.png", soup_plot)]:
        make(args.out / name)
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
