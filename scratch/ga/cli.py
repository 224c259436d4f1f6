"""python -m scratch.ga: evolve agents for a game, compare with random search, replay the best."""

from __future__ import annotations

import argparse

import numpy as np

from scratch import helpers
from scratch.ga.engine import Settings, evolve, random_search
from scratch.ga.games import GAMES, make
from scratch.ga.operators import CROSSOVERS, SELECTIONS
from scratch.ga.play import play_coins, play_snake
from scratch.ga.render import play_in_terminal, save_gif, save_plot

PROG = "python -m scratch.ga"
FRESH_EPISODES = 51  # held-out episodes for the evolved agent's median score

_positive = helpers.int_range(1)
_seed = helpers.int_range(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = helpers.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--game", help="what to evolve for (see --list-games)")
    p.add_argument("--list-games", action="store_true", help="print the games, one per line")
    p.add_argument("--generations", type=_positive, help="generations (default: per game)")
    p.add_argument("--population", type=_positive, help="population size (default: per game)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--selection", choices=sorted(SELECTIONS), help="default: tournament")
    p.add_argument("--crossover", choices=sorted(CROSSOVERS), help="default: per game")
    p.add_argument("--target", type=float, help="stop once the best score reaches this")
    p.add_argument("--patience", type=_positive, help="stop after N generations without a new best")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    p.add_argument("--plot", metavar="PNG", help="write the fitness-curve plot here")
    p.add_argument("--gif", metavar="GIF", help="write a replay of the best agent here")
    p.add_argument("--show", action="store_true", help="replay the best agent in the terminal")
    p.add_argument("--play", action="store_true", help="play the game yourself in the terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def population_bytes(game, population: int) -> int:
    """Peak memory of one generation: each genome's row and its copies in breeding (parents,
    children, float64 random draws: ~64 bytes per gene) plus the game's own simulation."""
    per_agent = game.genome.length * 64 + getattr(game, "bytes_per_agent", lambda: 0)()
    return population * per_agent


def run(game, settings: Settings, progress: bool = True) -> tuple[dict, object, list]:
    """Evolve, then random search under the same number of evaluations. Returns the JSON
    report, the evolve Result and random search's (evaluations, best-so-far) curve."""
    result = evolve(game.genome, game.fitness, settings, progress=progress)
    _, random_best, curve = random_search(
        game.genome, game.fitness, result.evaluations, settings.seed, batch=settings.population
    )
    report = {
        "game": game.name,
        "best_score": result.best_score,
        "history": result.history,
        "random_search_best": random_best,
        "evaluations": result.evaluations,
        "population": settings.population,
        "generations": len(result.history) - 1,
        "seed": settings.seed,
    }
    if hasattr(game, "scores"):  # games with random episodes: score the agent on unseen ones
        fresh = game.scores(result.best_genome, [10_000 + i for i in range(FRESH_EPISODES)])
        report["evolved_median_score"] = float(np.median(fresh))
    evals = np.minimum(np.arange(1, len(curve) + 1) * settings.population, result.evaluations)
    return report, result, list(zip(evals.tolist(), curve, strict=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_games:
        for name, cls in GAMES.items():
            print(f"{name}\t{cls.description}")
        return 0
    if not args.game:
        raise helpers.UsageError("--game is required (or --list-games)", f"{PROG} --list-games")
    try:
        game = make(args.game)
    except KeyError as e:
        raise helpers.UsageError(e.args[0], f"{PROG} --list-games") from None
    playable = hasattr(game, "frames")
    if (args.gif or args.show or args.play) and not playable:
        raise helpers.UsageError(
            f"{args.game} is a benchmark function; it has no replay or play",
            f"{PROG} --list-games",
        )
    if args.play:
        (play_snake if args.game == "snake" else play_coins)(game)
        return 0

    overrides = {
        k: v
        for k, v in {
            "generations": args.generations,
            "population": args.population,
            "selection": args.selection,
            "crossover": args.crossover,
            "target": args.target,
            "patience": args.patience,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**{**game.settings, **overrides, "seed": args.seed})
        settings.check()
        helpers.check_memory(
            population_bytes(game, settings.population), f"--population {settings.population}"
        )
        report, result, curve = run(game, settings, progress=not args.quiet)
    except ValueError as e:
        raise helpers.UsageError(e) from None

    line = f"{game.name}: GA best {report['best_score']:.4g}, random search best "
    line += f"{report['random_search_best']:.4g} ({report['evaluations']} evaluations each)"
    if "evolved_median_score" in report:
        line += f"; evolved agent median on {FRESH_EPISODES} unseen episodes "
        line += f"{report['evolved_median_score']:.4g}"
    print(line)
    if args.json:
        helpers.write_json(args.json, report)
    if args.plot:
        save_plot(result.history, curve, args.plot, f"{game.name}: GA vs random search")
    if args.gif or args.show:
        frames = game.frames(result.best_genome)
        border = args.game == "snake"
        if args.gif:
            save_gif(frames, args.gif, border)
        if args.show:
            play_in_terminal(frames, border)
    return 0
