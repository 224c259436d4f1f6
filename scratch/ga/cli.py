"""python -m scratch.ga: evolve agents for a game, compare with random search, replay the best."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from scratch.ga.engine import Settings, evolve, random_search
from scratch.ga.games import GAMES, make
from scratch.ga.operators import CROSSOVERS, SELECTIONS

FRESH_EPISODES = 51  # held-out episodes for the evolved agent's median score


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scratch.ga", description=__doc__)
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


def write_json_atomic(path: str, data: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".json")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
        sys.exit("scratch.ga: error: --game is required (or --list-games)")
    try:
        game = make(args.game)
    except KeyError as e:
        sys.exit(f"scratch.ga: error: {e.args[0]}")
    playable = hasattr(game, "frames")
    if (args.gif or args.show or args.play) and not playable:
        sys.exit(
            f"scratch.ga: error: {args.game} is a benchmark function; it has no replay or play"
        )
    if args.play:
        from scratch.ga.play import play_coins, play_snake

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
        report, result, curve = run(game, settings, progress=not args.quiet)
    except ValueError as e:
        sys.exit(f"scratch.ga: error: {e}")

    line = f"{game.name}: GA best {report['best_score']:.4g}, random search best "
    line += f"{report['random_search_best']:.4g} ({report['evaluations']} evaluations each)"
    if "evolved_median_score" in report:
        line += f"; evolved agent median on {FRESH_EPISODES} unseen episodes "
        line += f"{report['evolved_median_score']:.4g}"
    print(line)
    if args.json:
        write_json_atomic(args.json, report)
    if args.plot:
        from scratch.ga.render import save_plot

        save_plot(result.history, curve, args.plot, f"{game.name}: GA vs random search")
    if args.gif or args.show:
        from scratch.ga.render import play_in_terminal, save_gif

        frames = game.frames(result.best_genome)
        border = args.game == "snake"
        if args.gif:
            save_gif(frames, args.gif, border)
        if args.show:
            play_in_terminal(frames, border)
    return 0
