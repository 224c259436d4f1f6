"""Regenerate the figures in docs/ga.md: python -m scratch.ga.figures [--out docs/figures]

Writes ga_coins_fitness.png, ga_snake_fitness.png, ga_coins_replay.gif and ga_snake_replay.gif
(default settings, seed 0), each well under 1 MB.
"""

from __future__ import annotations

import os

from scratch import helpers
from scratch.ga.cli import run
from scratch.ga.engine import Settings
from scratch.ga.games import make
from scratch.ga.render import save_gif, save_plot

PROG = "python -m scratch.ga.figures"
MAX_FRAMES = 300  # keeps a long snake replay's GIF small


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
        save_gif(frames, os.path.join(args.out, f"ga_{name}_replay.gif"), name == "snake", cell)
        print(
            f"{name}: best {report['best_score']:.3g}, "
            f"random search {report['random_search_best']:.3g}"
        )
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
