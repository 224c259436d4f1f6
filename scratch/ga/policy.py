"""A small tanh policy network whose weights are one flat genome row (for neuroevolution)."""

from __future__ import annotations

import numpy as np


class Policy:
    """inputs -> tanh hidden layer -> one score per action; the agent takes the argmax."""

    def __init__(self, n_inputs: int, n_hidden: int, n_actions: int) -> None:
        self.shapes = [(n_inputs, n_hidden), (n_hidden,), (n_hidden, n_actions), (n_actions,)]
        self.n_params = sum(int(np.prod(s)) for s in self.shapes)

    def unpack(self, genomes: np.ndarray) -> list[np.ndarray]:
        """(n, n_params) -> [w1 (n, in, hid), b1 (n, hid), w2 (n, hid, act), b2 (n, act)]."""
        parts, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            parts.append(genomes[:, start : start + size].reshape(len(genomes), *shape))
            start += size
        return parts

    @staticmethod
    def act(params: list[np.ndarray], inputs: np.ndarray) -> np.ndarray:
        """Actions for a batch: row i of inputs goes through network i (params from unpack,
        one network per row)."""
        w1, b1, w2, b2 = params
        hidden = np.tanh(np.matmul(inputs[:, None, :], w1)[:, 0] + b1)
        return np.argmax(np.matmul(hidden[:, None, :], w2)[:, 0] + b2, axis=1)
