"""Modules: objects that own parameters (Tensors with requires_grad) and a forward function.

A Module finds its parameters by looking at its own attributes: a Tensor that requires a
gradient is a parameter, a Module is a child, a list of Modules is a numbered list of children.
Parameter names ("blocks.0.attn.qkv.weight") are those paths, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scratch import helpers
from scratch.nn import functional as F
from scratch.nn.tensor import DEFAULT_DTYPE, Tensor, concat, no_grad


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def _uniform(rng, bound: float, shape) -> Tensor:
    # PyTorch's default for Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    return Tensor(rng.uniform(-bound, bound, shape).astype(DEFAULT_DTYPE), requires_grad=True)


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def train(self, mode: bool = True) -> Module:
        """Training mode turns dropout on; eval mode (train(False)) turns it off."""
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = dict(self.named_parameters())
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {extra}")
        for name, p in own.items():
            if p.shape != state[name].shape:
                raise ValueError(f"{name}: shape {state[name].shape}, expected {p.shape}")
            p.data = np.array(state[name], dtype=p.dtype)

    def save(self, path: str | Path) -> None:
        """Weights as a plain .npz (arrays only, nothing executable: no pickle), written
        atomically to exactly `path`."""
        helpers.save_npz(path, **self.state_dict())

    def load(self, path: str | Path) -> None:
        with np.load(path, allow_pickle=False) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files})


class Linear(Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = True, rng=None):
        rng = _rng(rng)
        self.weight = _uniform(rng, n_in**-0.5, (n_out, n_in))
        self.bias = _uniform(rng, n_in**-0.5, (n_out,)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv2d(Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride=1, padding=0, rng=None):
        rng = _rng(rng)
        bound = (c_in * kernel * kernel) ** -0.5
        self.weight = _uniform(rng, bound, (c_out, c_in, kernel, kernel))
        self.bias = _uniform(rng, bound, (c_out,))
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class MaxPool2d(Module):
    def __init__(self, size: int = 2):
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.size)


class Embedding(Module):
    def __init__(self, n_vocab: int, dim: int, std: float = 1.0, rng=None):
        table = _rng(rng).normal(0.0, std, (n_vocab, dim)).astype(DEFAULT_DTYPE)
        self.weight = Tensor(table, requires_grad=True)

    def forward(self, indices: np.ndarray) -> Tensor:
        return F.embedding(self.weight, indices)


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        self.weight = Tensor(np.ones(dim, DEFAULT_DTYPE), requires_grad=True)
        self.bias = Tensor(np.zeros(dim, DEFAULT_DTYPE), requires_grad=True)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    def __init__(self, p: float, rng=None):
        self.p, self.rng = p, _rng(rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.rng)


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class GELU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.gelu()


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class Flatten(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)


class Sequential(Module):
    def __init__(self, *layers: Module):
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class RNN(Module):
    """Elman RNN: h_t = tanh(W_x x_t + W_h h_{t-1} + b); the same weights at every step."""

    def __init__(self, n_in: int, n_hidden: int, rng=None):
        rng = _rng(rng)
        self.input = Linear(n_in, n_hidden, rng=rng)
        self.hidden = Linear(n_hidden, n_hidden, bias=False, rng=rng)
        self.n_hidden = n_hidden

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, n_in) -> hidden states (B, T, n_hidden)."""
        drive = self.input(x)  # the input part for all steps at once
        h = Tensor(np.zeros((x.shape[0], self.n_hidden), x.dtype))
        states = []
        for t in range(x.shape[1]):  # sequential: step t needs step t-1
            h = (drive[:, t] + self.hidden(h)).tanh()
            states.append(h.reshape(x.shape[0], 1, self.n_hidden))
        return concat(states, axis=1)


class CausalSelfAttention(Module):
    def __init__(self, dim: int, n_head: int, dropout: float = 0.0, rng=None):
        if dim % n_head:
            raise ValueError(f"embedding size {dim} is not divisible by {n_head} heads")
        self.qkv = Linear(dim, 3 * dim, rng=rng)  # queries, keys, values in one matmul
        self.proj = Linear(dim, dim, rng=rng)
        self.drop = Dropout(dropout, rng=rng)
        self.n_head = n_head

    def forward(self, x: Tensor) -> Tensor:
        # one matmul makes queries, keys and values for all heads; see F.multi_head_attention
        merged = F.multi_head_attention(self.qkv(x), self.n_head, causal=True)
        return self.drop(self.proj(merged))


class TransformerBlock(Module):
    """Pre-norm GPT block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.0, rng=None):
        self.ln1 = LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, dropout, rng=rng)
        self.ln2 = LayerNorm(dim)
        self.fc = Linear(dim, 4 * dim, rng=rng)
        self.fc_proj = Linear(4 * dim, dim, rng=rng)
        self.drop = Dropout(dropout, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.fc_proj(self.fc(self.ln2(x)).gelu()))


class GPT(Module):
    """Token + position embeddings, a stack of transformer blocks, a linear map to logits."""

    def __init__(self, n_vocab, block_size, dim=64, n_head=4, n_layer=2, dropout=0.0, rng=None):
        rng = _rng(rng)
        self.block_size = block_size
        self.tok_emb = Embedding(n_vocab, dim, std=0.02, rng=rng)
        self.pos_emb = Embedding(block_size, dim, std=0.02, rng=rng)
        self.drop = Dropout(dropout, rng=rng)
        self.blocks = [TransformerBlock(dim, n_head, dropout, rng=rng) for _ in range(n_layer)]
        self.ln_f = LayerNorm(dim)
        self.head = Linear(dim, n_vocab, bias=False, rng=rng)

    def forward(self, idx: np.ndarray) -> Tensor:
        """idx (B, T) integer tokens -> logits (B, T, n_vocab)."""
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block size {self.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(np.arange(t)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def generate(self, idx: np.ndarray, n_new: int, rng, temperature: float = 1.0) -> np.ndarray:
        """Append n_new tokens, each sampled from the model's next-token distribution."""
        was_training = self.training
        self.eval()
        with no_grad():
            for _ in range(n_new):
                logits = self(idx[:, -self.block_size :]).data[:, -1].astype(np.float64)
                logits = logits / temperature
                probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
                nxt = np.array([rng.choice(len(p), p=p) for p in probs])
                idx = np.concatenate([idx, nxt[:, None]], axis=1)
        self.train(was_training)
        return idx
