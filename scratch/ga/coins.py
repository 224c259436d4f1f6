"""Coin run: a fixed maze with coins; the genome is the whole plan, one move per step.

A move into a wall leaves the agent where it is. Score = coins collected within the moves.
The maze never changes, so a plan's score is deterministic and the whole population walks
its plans in lock-step, one array update per step.
"""

from __future__ import annotations

import numpy as np

from scratch.ga.genome import Genome

EMPTY, WALL, COIN, AGENT, TRAIL = 0, 1, 2, 3, 4
MAZE = """\
###############
#S...#o....#.o#
#.##.#.###.#.##
#o#..o...#...o#
#.#.###.##.##.#
#...#o....o#..#
###.#.####.#.##
#o..#..o#....o#
#.###.#.#.###.#
#o....#...#o..#
###############"""
MOVES = "wdsa"  # up, right, down, left: the keys a human uses too
DY = np.array([-1, 0, 1, 0])
DX = np.array([0, 1, 0, -1])


class Coins:
    name = "coins"
    description = "Coin run: collect coins in a fixed maze; genome = a plan of 100 moves"

    def __init__(self, moves: int = 100) -> None:
        rows = MAZE.splitlines()
        self.height, self.width = len(rows), len(rows[0])
        chars = np.array([list(r) for r in rows])
        self.wall = (chars == "#").reshape(-1)
        self.start = int(np.flatnonzero(chars.reshape(-1) == "S")[0])
        coin_cells = np.flatnonzero(chars.reshape(-1) == "o")
        self.coin_of_cell = np.full(self.wall.size, -1)
        self.coin_of_cell[coin_cells] = np.arange(len(coin_cells))
        self.n_coins = len(coin_cells)
        self.step = DY * self.width + DX  # flat-index offset of each move
        self.genome = Genome("ints", moves, 0, 4)
        self.settings = {
            "population": 200,
            "generations": 100,
            "crossover": "one_point",
            "crossover_rate": 0.8,
            "mutation_rate": 0.02,
            "elitism": 2,
        }

    def walk(self, plans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions after each move (n, moves + 1) and coins collected (n, n_coins)."""
        n = len(plans)
        position = np.full(n, self.start)
        path = [position]
        collected = np.zeros((n, self.n_coins), dtype=bool)
        rows = np.arange(n)
        for move in plans.T:
            target = position + self.step[move]
            position = np.where(self.wall[target], position, target)
            coin = self.coin_of_cell[position]
            on_coin = coin >= 0
            collected[rows[on_coin], coin[on_coin]] = True
            path.append(position)
        return np.stack(path, axis=1), collected

    def bytes_per_agent(self) -> int:
        """Simulation memory per agent: its path of positions (int64) and a copy."""
        return 16 * (self.genome.length + 1)

    def fitness(self, plans: np.ndarray) -> np.ndarray:
        return self.walk(plans)[1].sum(axis=1).astype(np.float64)

    def frames(self, plan: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        """One grid of cell codes per step of the plan (the seed is unused: the maze is fixed)."""
        path = self.walk(plan[None, :])[0][0]
        base = np.where(self.wall, WALL, EMPTY).astype(np.uint8)
        base[self.coin_of_cell >= 0] = COIN
        frames = []
        for t, cell in enumerate(path):
            grid = base.copy()
            grid[path[:t]] = TRAIL  # coins on visited cells are collected
            grid[cell] = AGENT
            frames.append(grid.reshape(self.height, self.width))
        return frames
