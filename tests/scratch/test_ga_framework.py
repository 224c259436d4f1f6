"""scratch.ga framework: genomes, operators, the evolve loop, random search."""

import numpy as np
import pytest

from scratch.ga import Genome, Settings, evolve, random_search
from scratch.ga import operators as ops
from scratch.ga.problems import neg_rastrigin, onemax, rastrigin


def is_permutation_rows(pop: np.ndarray) -> bool:
    return bool((np.sort(pop, axis=1) == np.arange(pop.shape[1])).all())


def test_random_genomes_respect_kind_and_bounds():
    rng = np.random.default_rng(0)
    assert set(np.unique(Genome("bits", 50).random(rng, 20))) == {0, 1}
    ints = Genome("ints", 50, 2, 5).random(rng, 20)
    assert ints.min() == 2 and ints.max() == 4
    reals = Genome("reals", 50, -1.0, 3.0).random(rng, 20)
    assert reals.min() >= -1.0 and reals.max() <= 3.0
    assert is_permutation_rows(Genome("perm", 30).random(rng, 20))


def test_bad_genome_is_rejected():
    with pytest.raises(ValueError):
        Genome("floats", 10)
    with pytest.raises(ValueError):
        Genome("reals", 10, 1.0, 1.0)


def test_order_crossover_and_swap_keep_permutations():
    rng = np.random.default_rng(1)
    genome = Genome("perm", 17)
    a, b = genome.random(rng, 500), genome.random(rng, 500)
    child = ops.order(a, b, rng, rate=1.0)
    assert is_permutation_rows(child)
    assert (child != a).any()  # it did cross
    ops.swap(child, 0.5, rng)
    assert is_permutation_rows(child)
    # The segment copied from a sits where it was in a: every gene equal to a's or in b's order.
    assert (ops.order(a, b, rng, rate=0.0) == a).all()


def test_one_point_and_uniform_take_each_gene_from_a_parent():
    rng = np.random.default_rng(2)
    a, b = np.zeros((300, 40), np.uint8), np.ones((300, 40), np.uint8)
    one = ops.one_point(a, b, rng, rate=1.0)
    # One cut per row: the row is 0...0 1...1 with at least one of each.
    assert (np.diff(one.astype(int), axis=1) >= 0).all()
    assert (one[:, 0] == 0).all() and (one[:, -1] == 1).all()
    uni = ops.uniform(a, b, rng, rate=1.0)
    assert 0.4 < uni.mean() < 0.6
    assert (ops.uniform(a, b, rng, rate=0.0) == a).all()


def test_blend_stays_in_widened_interval():
    rng = np.random.default_rng(3)
    a, b = np.zeros((1000, 5)), np.ones((1000, 5))
    child = ops.blend(a, b, rng, rate=1.0, alpha=0.5)
    assert child.min() >= -0.5 and child.max() <= 1.5
    assert child.min() < -0.3 and child.max() > 1.3


def test_mutations_change_about_rate_times_genes():
    rng = np.random.default_rng(4)
    bits = np.zeros((100, 1000), np.uint8)
    ops.bit_flip(bits, 0.01, rng)
    assert 800 < bits.sum() < 1200
    reals = np.zeros((100, 1000))
    ops.gaussian(reals, 0.01, rng, sigma=1.0, low=-0.5, high=0.5)
    assert 800 < (reals != 0).sum() < 1200 and np.abs(reals).max() <= 0.5
    ints = np.zeros((100, 1000), np.int32)
    ops.random_reset(ints, 0.5, rng, 0, 4)
    assert ints.max() == 3 and ints.min() == 0


def test_selection_prefers_better_scores_and_handles_negatives():
    rng = np.random.default_rng(5)
    scores = -np.arange(100.0)[::-1]  # all negative, best is the last
    for name, select in ops.SELECTIONS.items():
        picked = select(scores, 5000, rng)
        assert picked.min() >= 0 and picked.max() < 100, name
        assert scores[picked].mean() > scores.mean() + 5, name
    assert (ops.tournament(scores, 50, rng, size=1000) == 99).all()


def test_seeded_runs_reproduce_exactly_and_seeds_differ():
    genome = Genome("bits", 64)
    runs = [
        evolve(genome, onemax, Settings(population=30, generations=10, seed=s)) for s in (7, 7, 8)
    ]
    assert runs[0].history == runs[1].history
    assert (runs[0].best_genome == runs[1].best_genome).all()
    assert runs[0].history != runs[2].history


def test_elitism_keeps_best_non_decreasing():
    genome = Genome("reals", 10, -5.12, 5.12)
    settings = Settings(population=40, generations=30, mutation_rate=0.5, sigma=0.5, elitism=1)
    bests = [h["best"] for h in evolve(genome, neg_rastrigin, settings).history]
    assert all(b2 >= b1 for b1, b2 in zip(bests, bests[1:], strict=False))


def test_stopping_rules_end_early():
    genome = Genome("bits", 20)
    hit = evolve(genome, onemax, Settings(population=50, generations=500, target=20, seed=1))
    assert hit.best_score == 20 and len(hit.history) < 501
    flat = evolve(genome, lambda p: np.zeros(len(p)), Settings(generations=500, patience=5))
    assert len(flat.history) == 6  # generation 0 sets the best, 1-5 bring no improvement


def test_evolution_beats_random_search_on_onemax_and_rastrigin():
    ga = evolve(Genome("bits", 200), onemax, Settings(population=100, generations=40, seed=2))
    _, random_best, _ = random_search(Genome("bits", 200), onemax, ga.evaluations, seed=2)
    assert ga.best_score > random_best + 20
    genome = Genome("reals", 10, -5.12, 5.12)
    settings = Settings(
        population=100, generations=60, crossover="blend", mutation_rate=0.1, sigma=0.03, seed=2
    )
    ga = evolve(genome, neg_rastrigin, settings)
    _, random_best, _ = random_search(genome, neg_rastrigin, ga.evaluations, seed=2)
    assert ga.best_score > random_best
    assert rastrigin(np.zeros((1, 30)))[0] == 0


def test_history_records_every_generation_and_evaluations():
    res = evolve(
        Genome("perm", 8),
        lambda p: -np.abs(p - np.arange(8)).sum(1).astype(float),
        Settings(population=20, generations=5, crossover="order", elitism=2),
    )
    assert [h["generation"] for h in res.history] == list(range(6))
    assert res.evaluations == 20 + 5 * 18  # elites are not evaluated again
    assert all(set(h) >= {"best", "mean", "diversity"} for h in res.history)


def test_bad_settings_are_rejected():
    genome = Genome("perm", 8)
    with pytest.raises(ValueError, match="order"):
        evolve(genome, lambda p: np.zeros(len(p)), Settings(crossover="one_point"))
    with pytest.raises(ValueError, match="elitism"):
        evolve(Genome("bits", 8), onemax, Settings(population=4, elitism=4))
