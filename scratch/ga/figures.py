"""Regenerate the figures in docs/ga.md: python -m scratch.ga.figures [--out docs/figures]

Writes ga_coins_fitness.png, ga_snake_fitness.png, ga_coins_replay.gif and ga_snake_replay.gif
(default settings, seed 0), each well under 1 MB.
"""

from __future__ import annotations

import os

import numpy as np

from scratch import helpers
from scratch.ga import coins, snake
from scratch.ga.cli import run
from scratch.ga.engine import Settings
from scratch.ga.games import make
from scratch.ga.render import save_gif, save_plot

PROG = "python -m scratch.ga.figures"
MAX_FRAMES = 300  # keeps a long snake replay's GIF small
# Colour keys of the replays (cell codes of coins.py and snake.py).
KEYS = {"coins": [(coins.WALL, "wall"), (coins.COIN, "coin"), (coins.AGENT, "agent"),
                  (coins.TRAIL, "path walked")],
        "snake": [(snake.HEAD, "head"), (snake.BODY, "body"), (snake.FOOD, "food"),
                  (snake.WALL, "edge: leaving the board ends the game")]}


def coins_captions(frames: list[np.ndarray]) -> list[str]:
    """The score so far: coins collected (the coins no longer on the board)."""
    total = int((frames[0] == coins.COIN).sum())
    return [f"step {t}: {total - int((f == coins.COIN).sum())} of {total} coins"
            for t, f in enumerate(frames)]


def snake_captions(frames: list[np.ndarray]) -> list[str]:
    """The score so far: food eaten (each time the food moves, it was eaten)."""
    eaten, out, food = 0, [], None
    for t, f in enumerate(frames):
        where = tuple(np.argwhere(f == snake.FOOD).ravel())
        if food is not None and where != food:
            eaten += 1
        food = where
        out.append(f"step {t}: {eaten} food eaten")
    return out


CAPTIONS = {"coins": coins_captions, "snake": snake_captions}


def main(argv: list[str] | None = None) -> int:
    p = helpers.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--out", default="docs/figures", help="folder for the figures")
    p.add_argument("--seed", type=helpers.int_range(0), default=0)
    args = p.parse_args(argv)
    for name in ("coins", "snake"):
        game = make(name)
        report, result, curve = run(game, Settings(**{**game.settings, "seed": args.seed}))
        title = f"{name}: GA vs random search (seed {args.seed})"
        save_plot(result.history, curve, os.path.join(args.out, f"ga_{name}_fitness.png"), title)
        frames = game.frames(result.best_genome)[:MAX_FRAMES]
        cell = 16 if name == "coins" else 12
        save_gif(frames, os.path.join(args.out, f"ga_{name}_replay.gif"), name == "snake", cell,
                 captions=CAPTIONS[name](frames), legend=KEYS[name])
        print(
            f"{name}: best {report['best_score']:.3g}, "
            f"random search {report['random_search_best']:.3g}"
        )
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
