"""Human play in the terminal: type w/a/s/d (several at once is fine) and Enter; q quits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scratch.ga.render import text_frame

KEYS = {"w": 0, "d": 1, "s": 2, "a": 3}  # up, right, down, left


def _keys(read: Callable[[str], str]):
    """Yield moves from typed lines until q or end of input."""
    while True:
        try:
            line = read("move (w/a/s/d, q quits): ").strip().lower()
        except EOFError:
            return
        if "q" in line:
            return
        yield from (KEYS[c] for c in line if c in KEYS)
        if not line:
            yield None  # Enter alone: keep going (Snake) / stay (ignored by Coins)


def play_coins(
    game, read: Callable[[str], str] = input, write: Callable[[str], None] = print
) -> int:
    plan: list[int] = []
    write(text_frame(game.frames(np.array(plan, dtype=np.int64))[-1]))
    for move in _keys(read):
        if move is None:
            continue
        plan.append(move)
        score = int(game.fitness(np.array([plan]))[0])
        write(text_frame(game.frames(np.array(plan))[-1]))
        write(f"coins {score}/{game.n_coins}, moves left {game.genome.length - len(plan)}")
        if len(plan) >= game.genome.length or score == game.n_coins:
            break
    score = int(game.fitness(np.array([plan]))[0]) if plan else 0
    write(f"game over: {score} coins")
    return score


def play_snake(
    game, read: Callable[[str], str] = input, write: Callable[[str], None] = print
) -> int:
    moves = _keys(read)
    stop = object()

    def steer(frame: np.ndarray, score: int) -> int | None:
        write(text_frame(frame, border=True))
        write(f"food {score}")
        move = next(moves, stop)
        if move is stop:
            raise _Quit(score)
        return move

    try:
        blank = np.zeros((1, game.genome.length))
        score = int(game.simulate(blank, [game.episode_seeds[0]], steer=steer)[0][0, 0])
    except _Quit as quit:
        score = quit.score
    write(f"game over: {score} food")
    return score


class _Quit(Exception):
    def __init__(self, score: int) -> None:
        self.score = score
