"""scratch.ga vs DEAP, side by side in one run, plus the Snake neuroevolution target.

    python bench/bench_ga.py            # the full default run (what BENCHMARKS.md records)
    python bench/bench_ga.py --quick    # fewer generations/seeds, a smoke test

Both libraries run the same GA at population 1000: tournament(3) selection, crossover with
probability 0.7 (one-point for OneMax-1000, blend BLX-0.5 for Rastrigin-30), mutation of every
child with per-gene rate 1/L (bit flip) or 0.1 (gaussian, sigma 0.307), for the same number of
generations. DEAP's eaSimple re-evaluates only changed individuals and keeps no elite; scratch.ga
keeps one elite and evaluates the other 999 children, so it never uses fewer evaluations.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from deap import algorithms, base, creator, tools

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from scratch.ga import Genome, Settings, evolve  # noqa: E402
from scratch.ga.cli import run  # noqa: E402
from scratch.ga.problems import neg_rastrigin, onemax  # noqa: E402
from scratch.ga.snake import Snake  # noqa: E402

POPULATION = 1000
creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def deap_run(problem: str, generations: int, seed: int) -> tuple[float, float]:
    """(best score, generations per second) for DEAP's eaSimple."""
    random.seed(seed)
    toolbox = base.Toolbox()
    if problem == "onemax":
        length = 1000
        toolbox.register("gene", random.randint, 0, 1)
        toolbox.register("evaluate", lambda ind: (sum(ind),))
        toolbox.register("mate", tools.cxOnePoint)
        toolbox.register("mutate", tools.mutFlipBit, indpb=1.0 / length)
    else:
        length = 30
        toolbox.register("gene", random.uniform, -5.12, 5.12)
        toolbox.register(
            "evaluate",
            lambda ind: (
                -(10 * len(ind) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in ind)),
            ),
        )
        toolbox.register("mate", tools.cxBlend, alpha=0.5)
        toolbox.register("mutate", tools.mutGaussian, mu=0.0, sigma=0.03 * 10.24, indpb=0.1)
    toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.gene, length)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("select", tools.selTournament, tournsize=3)
    population = toolbox.population(n=POPULATION)
    start = time.perf_counter()
    population, _ = algorithms.eaSimple(
        population, toolbox, cxpb=0.7, mutpb=1.0, ngen=generations, verbose=False
    )
    seconds = time.perf_counter() - start
    return max(ind.fitness.values[0] for ind in population), generations / seconds


def ours_run(problem: str, generations: int, seed: int) -> tuple[float, float]:
    if problem == "onemax":
        genome, fitness = Genome("bits", 1000), onemax
        settings = Settings(POPULATION, generations, crossover="one_point", seed=seed)
    else:
        genome, fitness = Genome("reals", 30, -5.12, 5.12), neg_rastrigin
        settings = Settings(
            POPULATION, generations, crossover="blend", mutation_rate=0.1, sigma=0.03, seed=seed
        )
    start = time.perf_counter()
    result = evolve(genome, fitness, settings)
    return result.best_score, generations / (time.perf_counter() - start)


def compare(problem: str, generations: int, seeds: list[int]) -> None:
    deap = [deap_run(problem, generations, s) for s in seeds]
    ours = [ours_run(problem, generations, s) for s in seeds]
    deap_best, deap_speed = zip(*deap, strict=True)
    ours_best, ours_speed = zip(*ours, strict=True)
    ratio = np.median(ours_speed) / np.median(deap_speed)
    spread = f"[{min(deap_best):.4g}, {max(deap_best):.4g}]"
    verdict = (
        "better"
        if min(ours_best) > max(deap_best)
        else ("within" if min(ours_best) >= min(deap_best) else "BELOW")
    )
    print(f"{problem}: {generations} generations x population {POPULATION}, seeds {seeds}")
    print(
        f"  generations/s  DEAP {np.median(deap_speed):8.2f}   scratch.ga "
        f"{np.median(ours_speed):8.1f}   ratio {ratio:6.0f}x"
    )
    print(
        f"  best score     DEAP {spread}   scratch.ga "
        f"[{min(ours_best):.4g}, {max(ours_best):.4g}]   ({verdict} DEAP's seed spread)"
    )


def snake_target(seeds: list[int]) -> None:
    """The default `--game snake` run per seed (what `python -m scratch.ga --game snake --seed S`
    does): evolved median on unseen episodes vs the best of random search with the same
    evaluations, and the run's wall time."""
    ratios = []
    for seed in seeds:
        game = Snake()
        start = time.perf_counter()
        report, _, _ = run(game, Settings(**{**game.settings, "seed": seed}), progress=False)
        seconds = time.perf_counter() - start
        ratios.append(report["evolved_median_score"] / report["random_search_best"])
        print(
            f"snake default run, seed {seed}: {report['evaluations']} evaluations each, "
            f"{seconds:.1f} s; evolved median {report['evolved_median_score']:.1f} "
            f"(training best {report['best_score']:.2f}), random-search best "
            f"{report['random_search_best']:.2f}: ratio {ratios[-1]:.1f}x"
        )
    print(f"  ratio over seeds {seeds}: median {np.median(ratios):.1f}x, worst {min(ratios):.1f}x "
          "(target: >= 5x on every seed)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer generations and seeds")
    args = p.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    compare("onemax", 5 if args.quick else 20, seeds)
    compare("rastrigin", 20 if args.quick else 100, seeds)
    snake_target([0] if args.quick else [0, 1, 2, 3, 4])


if __name__ == "__main__":
    main()
