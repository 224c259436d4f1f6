"""Benchmark functions run through the framework: OneMax and Rastrigin (as batch fitness)."""

from __future__ import annotations

import numpy as np

from scratch.ga.genome import Genome


def onemax(population: np.ndarray) -> np.ndarray:
    """Number of ones; the optimum is the genome length."""
    n, length = population.shape
    if population.dtype == np.uint8 and length % 8 == 0 and length < 8 * 256:
        # Sum 8 genes at a time: each uint64 word holds 8 one-byte genes, and adding up fewer
        # than 256 words never carries from one byte lane into the next; then add the 8 lanes.
        lanes = np.ascontiguousarray(population).view(np.uint64).sum(axis=1)
        return lanes.view(np.uint8).reshape(n, 8).sum(axis=1).astype(np.float64)
    return population.sum(axis=1, dtype=np.int64).astype(np.float64)


def rastrigin(x: np.ndarray) -> np.ndarray:
    """Rastrigin function, minimum 0 at x = 0 (many local minima on an integer lattice)."""
    return 10.0 * x.shape[1] + (x * x - 10.0 * np.cos(2.0 * np.pi * x)).sum(axis=1)


def neg_rastrigin(x: np.ndarray) -> np.ndarray:
    """-Rastrigin, so that higher is better like every other fitness here."""
    return -rastrigin(x)


class OneMax:
    name = "onemax"
    description = "OneMax-1000: maximise the number of ones in a 1000-bit string (optimum 1000)"

    def __init__(self, length: int = 1000) -> None:
        self.genome = Genome("bits", length)
        self.settings = {"population": 1000, "generations": 100, "crossover": "one_point"}
        self.fitness = onemax


class Rastrigin:
    name = "rastrigin"
    description = "Rastrigin-30: score = -rastrigin(x), x in [-5.12, 5.12]^30 (optimum 0)"

    def __init__(self, dims: int = 30) -> None:
        self.genome = Genome("reals", dims, -5.12, 5.12)
        self.settings = {
            "population": 1000,
            "generations": 200,
            "crossover": "blend",
            "crossover_rate": 0.7,
            "mutation_rate": 0.1,
            "sigma": 0.03,
        }
        self.fitness = neg_rastrigin
