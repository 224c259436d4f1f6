"""The generational loop: evaluate, record, stop or breed the next population.

`evolve` and `random_search` take a batch fitness function, population (n, L) -> scores (n,),
higher is better, deterministic (the same genome always gets the same score, which is what
lets elites keep their score without being evaluated again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from scratch.ga.genome import Genome
from scratch.ga.operators import CROSSOVERS, SELECTIONS, blend, mutate, tournament

Fitness = Callable[[np.ndarray], np.ndarray]


@dataclass
class Settings:
    """How to evolve. mutation_rate is per gene; None means 1 / genome length."""

    population: int = 100
    generations: int = 50
    selection: str = "tournament"
    tournament_size: int = 3
    crossover: str = "one_point"
    crossover_rate: float = 0.7
    blend_alpha: float = 0.5
    mutation_rate: float | None = None
    sigma: float = 0.1  # gaussian step as a fraction of the gene range
    elitism: int = 1
    seed: int = 0
    target: float | None = None  # stop once the best score reaches this
    patience: int | None = None  # stop after this many generations without a new best

    def check(self) -> None:
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {sorted(SELECTIONS)}")
        if self.crossover not in CROSSOVERS:
            raise ValueError(f"crossover must be one of {sorted(CROSSOVERS)}")
        if not 0 <= self.elitism < self.population:
            raise ValueError(f"elitism must be in [0, population), got {self.elitism}")
        if not 0.0 <= self.crossover_rate <= 1.0:
            raise ValueError(f"crossover_rate must be in [0, 1], got {self.crossover_rate}")
        if self.mutation_rate is not None and not 0.0 <= self.mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in [0, 1], got {self.mutation_rate}")


@dataclass
class Result:
    best_genome: np.ndarray
    best_score: float
    history: list[dict] = field(
        default_factory=list
    )  # generation, best, mean, diversity, evaluations
    evaluations: int = 0
    population: np.ndarray | None = None
    scores: np.ndarray | None = None


def _check_crossover(genome: Genome, crossover: str) -> None:
    if genome.kind == "perm" and crossover != "order":
        raise ValueError("permutation genomes need crossover 'order' to stay permutations")
    if crossover == "order" and genome.kind != "perm":
        raise ValueError("crossover 'order' is for permutation genomes")
    if crossover == "blend" and genome.kind != "reals":
        raise ValueError("crossover 'blend' is for real-valued genomes")


def breed(
    population: np.ndarray,
    scores: np.ndarray,
    n: int,
    genome: Genome,
    settings: Settings,
    rng: np.random.Generator,
) -> np.ndarray:
    """n children: select 2n parents, cross them pairwise, mutate."""
    if settings.selection == "tournament":
        parents = tournament(scores, 2 * n, rng, settings.tournament_size)
    else:
        parents = SELECTIONS[settings.selection](scores, 2 * n, rng)
    a, b = np.take(population, parents[:n], axis=0), np.take(population, parents[n:], axis=0)
    if settings.crossover == "blend":
        children = blend(a, b, rng, settings.crossover_rate, settings.blend_alpha)
        np.clip(children, genome.low, genome.high, out=children)
    else:
        children = CROSSOVERS[settings.crossover](a, b, rng, settings.crossover_rate)
    rate = settings.mutation_rate if settings.mutation_rate is not None else 1.0 / genome.length
    mutate(children, genome, rate, rng, settings.sigma)
    return children


def evolve(
    genome: Genome,
    fitness: Fitness,
    settings: Settings,
    progress: bool = False,
    initial: np.ndarray | None = None,
) -> Result:
    """Run a generational GA with elitism; the same settings and seed give the same result."""
    settings.check()
    _check_crossover(genome, settings.crossover)
    rng = np.random.default_rng(settings.seed)
    population = genome.random(rng, settings.population) if initial is None else initial.copy()
    scores = np.asarray(fitness(population), dtype=np.float64)
    evaluations = len(population)
    history: list[dict] = []
    best_so_far, stale = -np.inf, 0
    bar = tqdm(total=settings.generations, desc="evolving", disable=not progress, leave=False)
    for generation in range(settings.generations + 1):
        best = float(scores.max())
        history.append(
            {
                "generation": generation,
                "best": best,
                "mean": float(scores.mean()),
                "diversity": genome.diversity(population),
                "evaluations": evaluations,
            }
        )
        stale = 0 if best > best_so_far else stale + 1
        best_so_far = max(best_so_far, best)
        bar.set_postfix(best=f"{best:.4g}")
        if generation == settings.generations:
            break
        if settings.target is not None and best >= settings.target:
            break
        if settings.patience is not None and stale >= settings.patience:
            break
        # Elites are carried over with their scores: fitness is deterministic.
        elite = np.argsort(scores)[::-1][: settings.elitism]
        children = breed(
            population, scores, settings.population - settings.elitism, genome, settings, rng
        )
        child_scores = np.asarray(fitness(children), dtype=np.float64)
        evaluations += len(children)
        population = np.concatenate([population[elite], children])
        scores = np.concatenate([scores[elite], child_scores])
        bar.update()
    bar.close()
    top = int(np.argmax(scores))
    return Result(
        population[top].copy(), float(scores[top]), history, evaluations, population, scores
    )


def random_search(
    genome: Genome, fitness: Fitness, evaluations: int, seed: int = 0, batch: int = 1000
) -> tuple[np.ndarray, float, list[float]]:
    """Best of `evaluations` random genomes, drawn and scored `batch` at a time.

    Returns (best genome, best score, best-so-far after each batch).
    """
    rng = np.random.default_rng(seed + 1_000_003)  # a stream apart from evolve's
    best_genome, best_score, curve = None, -np.inf, []
    done = 0
    while done < evaluations:
        candidates = genome.random(rng, min(batch, evaluations - done))
        scores = np.asarray(fitness(candidates), dtype=np.float64)
        done += len(candidates)
        top = int(np.argmax(scores))
        if scores[top] > best_score:
            best_genome, best_score = candidates[top].copy(), float(scores[top])
        curve.append(best_score)
    return best_genome, best_score, curve
