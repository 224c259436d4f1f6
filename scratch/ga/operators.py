"""Selection, crossover and mutation, each applied to the whole population in a few array ops.

Selection returns row indices of parents. Crossover takes two parent arrays of equal shape and
returns one child per row pair; a row pair that is not crossed (probability 1 - rate) passes its
first parent through unchanged. Mutation changes a population in place.
"""

from __future__ import annotations

import functools

import numpy as np

from scratch.ga.genome import Genome

# ---------------------------------------------------------------- selection (maximising)


def tournament(scores: np.ndarray, n: int, rng: np.random.Generator, size: int = 3) -> np.ndarray:
    """Pick n parents, each the best of `size` individuals drawn at random."""
    entrants = rng.integers(0, len(scores), (n, size))
    return entrants[np.arange(n), np.argmax(scores[entrants], axis=1)]


def roulette(scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick n parents with probability proportional to score.

    Scores are shifted so the worst is a small positive number: roulette needs non-negative
    weights, and the shift keeps it usable for negative objectives such as -Rastrigin.
    """
    weights = scores - scores.min()
    weights = weights + (weights.max() * 1e-3 + 1e-12)
    cumulative = np.cumsum(weights)
    return np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right").clip(
        max=len(scores) - 1
    )


def rank(scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick n parents with probability proportional to rank (worst = 1, best = len)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    cumulative = np.cumsum(ranks)
    return np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right").clip(
        max=len(scores) - 1
    )


SELECTIONS = {"tournament": tournament, "roulette": roulette, "rank": rank}

# ---------------------------------------------------------------- crossover


@functools.lru_cache(maxsize=8)
def _prefix_masks(length: int) -> np.ndarray:
    """Row c is c Trues then Falses: one gather of rows builds every child's cut mask, several
    times faster than broadcasting a comparison at population 1000 x 1000 genes."""
    return np.arange(length) < np.arange(length + 1)[:, None]


def one_point(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Child takes genes [0, cut) from a and [cut, L) from b."""
    n, length = a.shape
    cut = rng.integers(1, max(length, 2), n)
    cut[rng.random(n) >= rate] = length  # not crossed: all genes from a
    child = b.copy()
    np.copyto(child, a, where=_prefix_masks(length)[cut])
    return child


def uniform(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Each gene comes from a or b with equal probability."""
    from_a = rng.random(a.shape) < 0.5
    from_a |= (rng.random(len(a)) >= rate)[:, None]
    return np.where(from_a, a, b)


def blend(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, rate: float, alpha: float = 0.5
) -> np.ndarray:
    """BLX-alpha for reals: each gene uniform in the parents' interval widened by alpha."""
    gamma = rng.uniform(-alpha, 1.0 + alpha, a.shape)
    gamma *= (rng.random(len(a)) < rate)[:, None]  # gamma 0 = copy of a
    return a + gamma * (b - a)


def order(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Order crossover (OX1) for permutations: a segment from a, the other genes in b's order.

    The child is always a valid permutation.
    """
    n, length = a.shape
    ends = np.sort(rng.integers(0, length + 1, (n, 2)), axis=1)
    keep = rng.random(n) >= rate
    ends[keep] = (0, length)  # not crossed: the whole of a
    positions = np.arange(length)
    in_segment = (positions >= ends[:, :1]) & (positions < ends[:, 1:])
    # Where each value sits in a, hence whether b's genes are already in a's segment.
    where_in_a = np.empty_like(a)
    np.put_along_axis(where_in_a, a, positions[None, :].repeat(n, 0), axis=1)
    b_gene_in_segment = np.take_along_axis(in_segment, np.take_along_axis(where_in_a, b, 1), 1)
    # Stable sorts line up free positions with b's unused genes, both in order.
    free_positions = np.argsort(in_segment, axis=1, kind="stable")
    unused_genes = np.take_along_axis(b, np.argsort(b_gene_in_segment, axis=1, kind="stable"), 1)
    child = np.empty_like(a)
    np.put_along_axis(child, free_positions, unused_genes, axis=1)
    return np.where(in_segment, a, child)


CROSSOVERS = {"one_point": one_point, "uniform": uniform, "blend": blend, "order": order}

# ---------------------------------------------------------------- mutation (in place)


def _mutated_cells(shape: tuple[int, int], rate: float, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of genes to mutate, each gene independently with probability `rate`.

    Drawing the count first and then the positions costs O(mutations), not O(genes): at
    rate 1/L only one gene per individual changes. Repeated positions count once.
    """
    total = shape[0] * shape[1]
    return rng.integers(0, total, rng.binomial(total, min(rate, 1.0)))


def bit_flip(population: np.ndarray, rate: float, rng: np.random.Generator) -> None:
    population.flat[_mutated_cells(population.shape, rate, rng)] ^= 1


def gaussian(
    population: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    sigma: float,
    low: float,
    high: float,
) -> None:
    """Add N(0, sigma) to chosen genes, clipped to [low, high]."""
    cells = _mutated_cells(population.shape, rate, rng)
    flat = population.reshape(-1)
    flat[cells] = np.clip(flat[cells] + rng.normal(0.0, sigma, len(cells)), low, high)


def random_reset(
    population: np.ndarray, rate: float, rng: np.random.Generator, low: int, high: int
) -> None:
    """Replace chosen integer genes by a fresh random value in [low, high)."""
    cells = _mutated_cells(population.shape, rate, rng)
    population.flat[cells] = rng.integers(low, high, len(cells))


def swap(population: np.ndarray, rate: float, rng: np.random.Generator) -> None:
    """Swap two genes in each individual with probability rate * length (keeps permutations valid).

    One swap per chosen row, so no two swaps can touch the same row in one fancy-index write.
    """
    n, length = population.shape
    rows = np.flatnonzero(rng.random(n) < min(rate * length, 1.0))
    i, j = rng.integers(0, length, (2, len(rows)))
    population[rows, i], population[rows, j] = population[rows, j], population[rows, i]


def mutate(
    population: np.ndarray, genome: Genome, rate: float, rng: np.random.Generator, sigma: float
) -> None:
    """The mutation that fits the genome kind: bit-flip, random reset, gaussian or swap."""
    if genome.kind == "bits":
        bit_flip(population, rate, rng)
    elif genome.kind == "ints":
        random_reset(population, rate, rng, int(genome.low), int(genome.high))
    elif genome.kind == "reals":
        gaussian(population, rate, rng, sigma * genome.span, genome.low, genome.high)
    else:
        swap(population, rate, rng)
