"""scratch.ga: a small genetic-algorithm framework (numpy only) and games evolved agents play.

from scratch.ga import Genome, Settings, evolve, random_search
result = evolve(Genome("bits", 100), lambda pop: pop.sum(1), Settings(seed=1))
"""

from scratch.ga.engine import Result, Settings, evolve, random_search
from scratch.ga.genome import Genome

__all__ = ["Genome", "Result", "Settings", "evolve", "random_search"]
