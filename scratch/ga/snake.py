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
EMPTY_STAMP = -(1 << 30)  # a cell never visited
OFF_BOARD_STAMP = 1 << 30  # the cell past a board edge: always an obstacle
LOOP_PERIOD = 16  # loops up to this many steps long are detected (see Snake._looping)


class Snake:
    name = "snake"
    description = "Snake on a 16x16 board; genome = weights of a small policy net (neuroevolution)"

    def __init__(
        self, size: int = 16, episodes: int = 20, hidden: int = 8, hunger: int = 128, seed: int = 0
    ) -> None:
        self.size, self.episodes = size, episodes
        self.hunger = hunger
        self.rays = self._rays()
        # rays[cell, heading] for the directions ahead, left and right of each heading, as one
        # (cells * 4, 3, size) table: a game's three rays are then one row.
        turns = (np.arange(4)[:, None] + np.array([0, 3, 1])) % 4
        self._rays_by_heading = self.rays[:, turns].reshape(-1, 3, size).astype(np.int32)
        self.policy = Policy(N_FEATURES, hidden, 3)
        self.genome = Genome("reals", self.policy.n_params, -3.0, 3.0)
        self.episode_seeds = [seed * 1000 + e for e in range(episodes)]
        # Mutation only (crossover_rate 0): mixing two networks' weights gene by gene mostly
        # breaks both (the same behaviour can sit in differently numbered hidden units), and
        # with uniform crossover at 0.5 some seeds converged early on a poor agent. With 20
        # training episodes instead of 12 an agent's mean score is less a matter of luck.
        # Measured per seed in BENCHMARKS.md (scratch/ga).
        self.settings = {
            "population": 200,
            "generations": 60,
            "crossover": "uniform",
            "crossover_rate": 0.0,
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

    def _empty_stamps(self, n: int) -> np.ndarray:
        """Boards with no snake on them, as stamps (see simulate); the extra last column is
        the off-board cell that rays end in, always blocked."""
        stamps = np.full((n, self.size * self.size + 1), EMPTY_STAMP, dtype=np.int32)
        stamps[:, -1] = OFF_BOARD_STAMP
        return stamps

    def _features(self, stamps, t, head, heading, food, length, slot=None) -> np.ndarray:
        """The network's inputs for each game (row slot[i] of stamps is game i's board)."""
        s = self.size
        n = len(head)
        slot = np.arange(n) if slot is None else slot
        out = np.empty((n, N_FEATURES), dtype=np.float32)
        # Cells along the rays ahead, left and right, and whether each is an obstacle: a body
        # cell other than the tail (the tail moves away this step), or off the board.
        # (flat indices: one np.take is several times faster than indexing with two arrays)
        # (int32 throughout: half the memory traffic of numpy's default int64)
        ray_cells = np.take(self._rays_by_heading, head * 4 + heading, axis=0)  # (n, 3, s)
        ray_cells += (slot * stamps.shape[1]).astype(np.int32)[:, None, None]
        tail_stamp = (t - length + 1).astype(np.int32)
        along = np.take(stamps, ray_cells) > tail_stamp[:, None, None]
        free = np.argmax(along, axis=2)  # cells before the first obstacle, per ray
        out[:, 0:3] = free == 0  # immediate danger
        out[:, 3:6] = free * (1 / s)
        # The food's offset ahead and to the right: the offset rotated into the heading.
        (y, x), (fy, fx) = np.divmod(head, s), np.divmod(food, s)
        dy, dx, hy, hx = fy - y, fx - x, DY[heading], DX[heading]
        out[:, 6] = (hy * dy + hx * dx) * (1 / s)
        out[:, 7] = (hx * dy - hy * dx) * (1 / s)
        out[:, 8] = length * (1 / (s * s))
        return out

    def simulate(
        self,
        genomes: np.ndarray,
        seeds: list[int],
        record: bool = False,
        steer: Callable[[np.ndarray, int], int | None] | None = None,
        skip_loops: bool = True,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (n_genomes, n_seeds); with record, the frames of game 0 (genome 0, seed 0).

        steer(frame, score) -> heading (0-3) or None (keep going) replaces the network for a
        single game: that is how a human plays. skip_loops ends games caught in a loop at once
        (the score is the same; see _looping); replays and human play always run to the end.

        The board is kept as stamps: stamps[g, cell] is the step at which game g's head last
        entered the cell. The snake is its last `length` head positions, so after t steps a
        cell is part of it when stamp > t - length: nothing has to be updated on the board
        per step except the new head's cell (one write per game, not one pass over the board).
        Games that end are dropped from the per-game arrays; their boards stay where they are
        (`slot` says where each game's board is), so no board is ever copied.
        """
        s, cells = self.size, self.size * self.size
        n_games = len(genomes) * len(seeds)
        agent = np.repeat(np.arange(len(genomes)), len(seeds))
        episode = np.tile(np.arange(len(seeds)), len(genomes))
        game = np.arange(n_games)
        # Each game's own copy of its agent's network, gathered once and compacted with the
        # games when some end (cheaper than gathering every step).
        net = [p[agent] for p in self.policy.unpack(genomes.astype(np.float32))]
        keys = self._food_keys(seeds)
        # Start in the middle heading up, tail below the head: stamps 0 (head), -1, -2 (tail).
        stamps = self._empty_stamps(n_games)
        width = stamps.shape[1]
        flat = stamps.reshape(-1)
        centre = (s // 2) * s + s // 2
        for k in range(3):
            stamps[:, centre + k * s] = -k
        t = 0
        slot = game.copy()
        head = np.full(n_games, centre)
        heading = np.zeros(n_games, dtype=np.int64)
        length = np.full(n_games, 3)
        eaten = np.zeros(n_games, dtype=np.int64)
        hungry = np.zeros(n_games, dtype=np.int64)
        food = self._place_food(stamps, t, length, keys[episode, 0])
        scores = np.zeros(n_games)
        frames: list[np.ndarray] = []
        turns = np.array([3, 0, 1])
        # Loop detection (see _looping): the last 2 * LOOP_PERIOD (cell, heading) states per game.
        detect = skip_loops and steer is None and not record and self.hunger > 2 * LOOP_PERIOD
        history = np.zeros((n_games, 2 * LOOP_PERIOD), dtype=np.int32) if detect else None
        while len(game):
            if record and game[0] == 0:
                frames.append(self._frame(stamps[slot[0]], t, length[0], head[0], food[0]))
            if steer is None:
                x = self._features(stamps, t, head, heading, food, length, slot)
                heading = (heading + turns[self.policy.act(net, x)]) & 3
            else:
                frame = self._frame(stamps[slot[0]], t, length[0], head[0], food[0])
                wanted = steer(frame, int(eaten[0]))
                if wanted is not None and wanted != (heading[0] + 2) % 4:  # no reversing
                    heading[:] = wanted
            ny, nx = np.divmod(head, s)
            ny += DY[heading]
            nx += DX[heading]
            inside = (ny >= 0) & (ny < s) & (nx >= 0) & (nx < s)
            new_head = np.where(inside, ny * s + nx, 0)
            eats = inside & (new_head == food)
            # Moving into the tail's cell is safe unless eating (then the tail stays): the cell
            # must be free after the tail moves, i.e. stamp <= t - length (+ 1 when not eating).
            where = slot * width + new_head
            target = flat[where]
            bites = target > t - length + ~eats
            hungry = np.where(eats, 0, hungry + 1)
            dead = ~inside | bites | (hungry >= self.hunger)
            t += 1
            length = length + eats
            flat[where[~dead]] = t
            head = new_head
            eaten = eaten + eats
            dead |= eats & (length >= cells)  # the board is full
            if detect:
                np.put(history, slot * (2 * LOOP_PERIOD) + t % (2 * LOOP_PERIOD),
                       head * 4 + heading)
                if t % 16 == 0:  # a game going round in a loop would starve: end it now
                    dead |= self._looping(history, slot, t, length, hungry)
            if eats.any():
                which = np.flatnonzero(eats & ~dead)
                next_keys = keys[episode[which], eaten[which] % cells]
                food[which] = self._place_food(stamps[slot[which]], t, length[which], next_keys)
            if dead.any():
                scores[game[dead]] = eaten[dead]
                if record and game[0] == 0 and dead[0] and inside[0]:  # show the fatal bite
                    frames.append(self._frame(stamps[slot[0]], t, length[0], head[0], -1))
                keep = ~dead
                slot, head, heading, length, eaten, hungry, food, game, episode = (
                    a[keep] for a in (slot, head, heading, length, eaten, hungry, food, game,
                                      episode)
                )
                net = [p[keep] for p in net]
        return scores.reshape(len(genomes), len(seeds)), frames

    @staticmethod
    def _looping(history, slot, t, length, hungry) -> np.ndarray:
        """Games that are in a loop: their last 2k states (head cell and heading) repeat with a
        period k <= LOOP_PERIOD, no food was eaten in them, and the snake is no longer than k.
        Then the state now equals the state k steps ago (the body is the last `length` head
        positions, all inside the repeating part), the policy is deterministic and the food
        has not moved, so the game repeats forever, never eats, and ends by hunger with the
        score it has now. Ending it here gives the same score without simulating the rest:
        random agents that spin in place are most of random search's games."""
        width = history.shape[1]
        looping = np.zeros(len(slot), dtype=bool)
        candidates = np.flatnonzero(hungry >= width)
        if len(candidates) == 0:
            return looping
        columns = (t + 1 + np.arange(width)) % width  # oldest to newest
        states = history[slot[candidates][:, None], columns]
        # A closed path on the grid that also restores the heading has an even length >= 4.
        # First the cheap test (the state now was seen k steps ago), then the whole window.
        periods = np.arange(4, LOOP_PERIOD + 1, 2)
        maybe = (states[:, width - 1 - periods] == states[:, -1:]) & (
            length[candidates, None] <= periods)
        rows, which = np.nonzero(maybe)
        if len(rows) == 0:
            return looping
        found = np.zeros(len(candidates), dtype=bool)
        for k in np.unique(periods[which]):
            at = rows[periods[which] == k]
            recent, before = states[at, width - k :], states[at, width - 2 * k : width - k]
            found[at[(recent == before).all(axis=1)]] = True
        looping[candidates] = found
        return looping

    @staticmethod
    def _place_food(stamps: np.ndarray, t: int, length: np.ndarray, keys: np.ndarray
                    ) -> np.ndarray:
        """The free cell (not part of the snake, head included) with the highest key."""
        free = stamps[:, :-1] <= (t - length)[:, None]
        return np.argmax(np.where(free, keys, -1.0), axis=1)

    def _frame(self, stamps: np.ndarray, t: int, length: int, head: int, food: int) -> np.ndarray:
        grid = np.where(stamps[:-1] > t - length, BODY, EMPTY).astype(np.uint8)
        if food >= 0:
            grid[food] = FOOD
        grid[head] = HEAD
        return grid.reshape(self.size, self.size)

    # ------------------------------------------------------------ framework hooks

    def bytes_per_agent(self) -> int:
        """Simulation memory per agent: per game, the board's int32 stamps, the rays' cells and
        values and its network's weights (~8 bytes per cell on a 16x16 board)."""
        return self.episodes * (self.size * self.size + 1) * 8

    def fitness(self, genomes: np.ndarray) -> np.ndarray:
        """Mean food eaten over the fixed training episodes."""
        return self.simulate(genomes, self.episode_seeds)[0].mean(axis=1)

    def scores(self, genome: np.ndarray, seeds: list[int]) -> np.ndarray:
        """One agent's score on each of the given episodes (e.g. fresh ones, for a median)."""
        return self.simulate(genome[None, :], seeds)[0][0]

    def frames(self, genome: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        seed = self.episode_seeds[0] if seed is None else seed
        return self.simulate(genome[None, :], [seed], record=True)[1]
