"""Snake, simulated for a whole population of policy networks at once (neuroevolution).

The snake moves on a size x size board without walls inside; leaving the board, biting itself or
going `hunger` steps without food ends the game. Score = food eaten. Each agent plays the same
fixed set of episodes (seeded food sequences), so its fitness (mean score) is deterministic.

The network sees, relative to its heading: whether the cell ahead / left / right is deadly, the
free distance along those three rays, the food's offset ahead and to the right, and its length;
it chooses turn-left / straight / turn-right.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scratch.ga.genome import Genome
from scratch.ga.policy import Policy

EMPTY, WALL, FOOD, HEAD, BODY = 0, 1, 2, 3, 4
DY = np.array([-1, 0, 1, 0])  # headings: 0 up, 1 right, 2 down, 3 left
DX = np.array([0, 1, 0, -1])
N_FEATURES = 9


class Snake:
    name = "snake"
    description = "Snake on a 16x16 board; genome = weights of a small policy net (neuroevolution)"

    def __init__(
        self, size: int = 16, episodes: int = 12, hidden: int = 8, hunger: int = 128, seed: int = 0
    ) -> None:
        self.size, self.episodes = size, episodes
        self.hunger = hunger
        self.rays = self._rays()
        self.policy = Policy(N_FEATURES, hidden, 3)
        self.genome = Genome("reals", self.policy.n_params, -3.0, 3.0)
        self.episode_seeds = [seed * 1000 + e for e in range(episodes)]
        self.settings = {
            "population": 200,
            "generations": 60,
            "crossover": "uniform",
            "crossover_rate": 0.5,
            "mutation_rate": 0.1,
            "sigma": 0.1,
            "tournament_size": 5,
            "elitism": 10,
        }

    # ------------------------------------------------------------ simulation

    def _food_keys(self, seeds: list[int]) -> np.ndarray:
        """Per episode, a random priority over cells for each successive food: the k-th food
        goes to the free cell with the highest key, the same whatever the agent did before."""
        cells = self.size * self.size
        return np.stack([np.random.default_rng(s).random((cells, cells)) for s in seeds])

    def _rays(self) -> np.ndarray:
        """rays[cell, d] = the cells walked from `cell` in direction d, padded with an off-board
        cell index (cells) that always reads as blocked."""
        s, cells = self.size, self.size * self.size
        rays = np.full((cells, 4, s), cells)
        for cell in range(cells):
            for d in range(4):
                y, x = divmod(cell, s)
                for step in range(s):
                    y, x = y + DY[d], x + DX[d]
                    if not (0 <= y < s and 0 <= x < s):
                        break
                    rays[cell, d, step] = y * s + x
        return rays

    def _features(self, life, head, heading, food, length) -> np.ndarray:
        s = self.size
        y, x = head // s, head % s
        fy, fx = food // s, food % s
        # A body cell with life 1 is the tail, which moves away this step: not an obstacle.
        blocked = np.concatenate([life > 1, np.ones((len(head), 1), dtype=bool)], axis=1)
        rows = np.arange(len(head))[:, None]
        out = np.empty((len(head), N_FEATURES))
        for k, turn in enumerate((0, 3, 1)):  # ahead, left, right
            along = blocked[rows, self.rays[head, (heading + turn) % 4]]
            free = np.argmax(along, axis=1)  # cells before the first obstacle
            out[:, k] = free == 0  # immediate danger
            out[:, 3 + k] = free / s
        turned = (heading + 1) % 4  # a right turn
        out[:, 6] = (DY[heading] * (fy - y) + DX[heading] * (fx - x)) / s
        out[:, 7] = (DY[turned] * (fy - y) + DX[turned] * (fx - x)) / s
        out[:, 8] = length / (s * s)
        return out

    def simulate(
        self,
        genomes: np.ndarray,
        seeds: list[int],
        record: bool = False,
        steer: Callable[[np.ndarray, int], int | None] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (n_genomes, n_seeds); with record, the frames of game 0 (genome 0, seed 0).

        steer(frame, score) -> heading (0-3) or None (keep going) replaces the network for a
        single game: that is how a human plays.
        """
        s, cells = self.size, self.size * self.size
        params = self.policy.unpack(genomes)
        keys = self._food_keys(seeds)
        n_games = len(genomes) * len(seeds)
        agent = np.repeat(np.arange(len(genomes)), len(seeds))
        episode = np.tile(np.arange(len(seeds)), len(genomes))
        game = np.arange(n_games)
        # Start in the middle heading up, tail below the head.
        life = np.zeros((n_games, cells), dtype=np.int16)
        centre = (s // 2) * s + s // 2
        for k in range(3):
            life[:, centre + k * s] = 3 - k
        head = np.full(n_games, centre)
        heading = np.zeros(n_games, dtype=np.int64)
        length = np.full(n_games, 3)
        eaten = np.zeros(n_games, dtype=np.int64)
        hungry = np.zeros(n_games, dtype=np.int64)
        food = self._place_food(life, keys[episode, 0], head)
        scores = np.zeros(n_games)
        frames: list[np.ndarray] = []
        while len(game):
            if record and game[0] == 0:
                frames.append(self._frame(life[0], head[0], food[0]))
            if steer is None:
                x = self._features(life, head, heading, food, length)
                turn = self.policy.act(params, agent, x)
                heading = (heading + np.array([3, 0, 1])[turn]) % 4
            else:
                wanted = steer(self._frame(life[0], head[0], food[0]), int(eaten[0]))
                if wanted is not None and wanted != (heading[0] + 2) % 4:  # no reversing
                    heading[:] = wanted
            ny, nx = head // s + DY[heading], head % s + DX[heading]
            inside = (ny >= 0) & (ny < s) & (nx >= 0) & (nx < s)
            new_head = np.where(inside, ny * s + nx, 0)
            rows = np.arange(len(game))
            eats = inside & (new_head == food)
            # Without eating, the tail cell (life 1) frees this step, so moving into it is safe.
            bites = life[rows, new_head] > np.where(eats, 0, 1)
            hungry = np.where(eats, 0, hungry + 1)
            dead = ~inside | bites | (hungry >= self.hunger)
            life[~eats] -= life[~eats] > 0
            length = length + eats
            life[rows, new_head] = np.where(dead, life[rows, new_head], length)
            head = new_head
            eaten = eaten + eats
            full = eats & (length >= cells)
            dead |= full
            if eats.any():
                which = np.flatnonzero(eats & ~dead)
                food[which] = self._place_food(
                    life[which], keys[episode[which], eaten[which] % cells], head[which]
                )
            if dead.any():
                scores[game[dead]] = eaten[dead]
                if record and game[0] == 0 and dead[0] and inside[0]:  # show the fatal bite
                    frames.append(self._frame(life[0], head[0], -1))
                keep = ~dead
                life, head, heading, length, eaten, hungry, food = (
                    a[keep] for a in (life, head, heading, length, eaten, hungry, food)
                )
                game, agent, episode = game[keep], agent[keep], episode[keep]
        return scores.reshape(len(genomes), len(seeds)), frames

    @staticmethod
    def _place_food(life: np.ndarray, keys: np.ndarray, head: np.ndarray) -> np.ndarray:
        free = life == 0
        free[np.arange(len(head)), head] = False
        return np.argmax(np.where(free, keys, -1.0), axis=1)

    def _frame(self, life: np.ndarray, head: int, food: int) -> np.ndarray:
        grid = np.where(life > 0, BODY, EMPTY).astype(np.uint8)
        if food >= 0:
            grid[food] = FOOD
        grid[head] = HEAD
        return grid.reshape(self.size, self.size)

    # ------------------------------------------------------------ framework hooks

    def bytes_per_agent(self) -> int:
        """Simulation memory per agent: per game, the board's int16 life counts and the
        temporaries of one step (~16 bytes per cell)."""
        return self.episodes * self.size * self.size * 16

    def fitness(self, genomes: np.ndarray) -> np.ndarray:
        """Mean food eaten over the fixed training episodes."""
        return self.simulate(genomes, self.episode_seeds)[0].mean(axis=1)

    def scores(self, genome: np.ndarray, seeds: list[int]) -> np.ndarray:
        """One agent's score on each of the given episodes (e.g. fresh ones, for a median)."""
        return self.simulate(genome[None, :], seeds)[0][0]

    def frames(self, genome: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        seed = self.episode_seeds[0] if seed is None else seed
        return self.simulate(genome[None, :], [seed], record=True)[1]
