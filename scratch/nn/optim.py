"""Optimizers (SGD with momentum, AdamW), gradient clipping and a learning-rate schedule.

Updates are written in place into preallocated buffers: allocating a fresh array per parameter
per step costs more than the arithmetic for small models.

Denormals: float32 numbers below ~1.2e-38 ("subnormal") are handled in slow microcode on x86;
a momentum or Adam buffer whose gradient has gone to zero decays geometrically into that range
and can make every following update several times slower. Every `flush_every` steps the
buffers' tiny values are set to exactly 0, which changes the result by less than 1e-38.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from scratch.nn.tensor import Tensor


def flush_denormals(array: np.ndarray) -> None:
    """Set every subnormal (nonzero magnitude below the smallest normal float) to 0, in place."""
    np.putmask(array, np.abs(array) < np.finfo(array.dtype).tiny, 0)


def count_denormals(array: np.ndarray) -> int:
    return int(np.count_nonzero((array != 0) & (np.abs(array) < np.finfo(array.dtype).tiny)))


class Optimizer:
    def __init__(self, params: Iterable[Tensor], lr: float, flush_every: int = 10):
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr
        self.flush_every = flush_every  # 0 turns the denormal guard off
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def buffers(self) -> list[np.ndarray]:
        return []

    def step(self) -> None:
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.update(i, p.data, p.grad)
        if self.flush_every and self.steps % self.flush_every == 0:
            for buffer in self.buffers():
                flush_denormals(buffer)

    def update(self, i: int, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """v = momentum * v + g; p -= lr * v   (PyTorch's formulation)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, **kw):
        super().__init__(params, lr, **kw)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def buffers(self) -> list[np.ndarray]:
        return self.velocity

    def update(self, i, param, grad):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        v = self.velocity[i]
        v *= self.momentum
        v += grad
        param -= self.lr * v


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), matching torch.optim.AdamW.

    Weight decay is applied only to matrices (ndim >= 2), not to biases and norm gains, as in
    GPT-2 training: shrinking a gain towards 0 is not regularisation.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **kw):
        super().__init__(params, lr, **kw)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def buffers(self) -> list[np.ndarray]:
        return self.m + self.v

    def update(self, i, param, grad):
        m, v, t = self.m[i], self.v[i], self.steps
        if self.weight_decay and param.ndim >= 2:
            param *= 1 - self.lr * self.weight_decay
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * (grad * grad)
        # bias correction: m and v start at 0, so early averages are too small by (1 - beta^t)
        denom = np.sqrt(v)
        denom *= 1 / math.sqrt(1 - self.beta2**t)
        denom += self.eps
        param -= (self.lr / (1 - self.beta1**t)) * (m / denom)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm."""
    grads = [p for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in grads:
            p.grad = p.grad * scale  # out of place: a grad may be a shared view
    return total


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup: int = 0, min_ratio=0.1) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay from base_lr to min_ratio*base_lr."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
