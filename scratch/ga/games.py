"""Everything `--game` can name: two playable games and two benchmark functions."""

from __future__ import annotations

from scratch.ga.coins import Coins
from scratch.ga.problems import OneMax, Rastrigin
from scratch.ga.snake import Snake

GAMES = {cls.name: cls for cls in (Coins, Snake, OneMax, Rastrigin)}


def make(name: str):
    """A fresh game/problem by name; KeyError names the known ones."""
    if name not in GAMES:
        raise KeyError(f"unknown game {name!r}; known: {', '.join(GAMES)}")
    return GAMES[name]()
