"""docs/reading.md stays true: its file:line pointers name what they say, its versions are the
installed ones, and the answers to its three exercises hold."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama

from scratch.nn import functional as F
from scratch.nn.tensor import Tensor, no_grad
from tests.conftest import ROOT

READING = (ROOT / "docs" / "reading.md").read_text(encoding="utf-8")
SITE_PACKAGES = Path(torch.__file__).resolve().parents[1]
POINTER = re.compile(r"`([\w/.]+\.py):(\d+)` `([\w.]+)`")


def pointers() -> list[tuple[str, int, str]]:
    return [(path, int(line), name) for path, line, name in POINTER.findall(READING)]


def test_there_are_pointers_into_all_three_code_bases():
    roots = {path.split("/")[0] for path, _, _ in pointers()}
    assert {"scratch", "torch", "transformers"} <= roots, roots
    for name in ("LlamaAttention", "repeat_kv", "apply_rotary_pos_emb"):
        assert any(n == name for _, _, n in pointers()), name


@pytest.mark.parametrize("path,line,name", pointers(), ids=lambda v: str(v))
def test_a_pointer_names_its_function_or_class(path, line, name):
    """`file.py:N` `Name` (or `Class.method`): line N defines it."""
    file = ROOT / path if path.startswith("scratch/") else SITE_PACKAGES / path
    text = file.read_text(encoding="utf-8").splitlines()[line - 1]
    short = name.split(".")[-1]
    assert re.match(rf"\s*(?:async\s+)?(?:def|class)\s+{re.escape(short)}\b", text), \
        f"{path}:{line} is {text.strip()!r}, not {name}"


# ---------------------------------------------------------------- exercise 1


def finite_difference_error(op, x: np.ndarray, rng: np.random.Generator) -> float:
    """Largest |analytic - numeric| gradient of sum(op(x) * w), as the scratch tests compute it."""
    xt = Tensor(x.copy(), requires_grad=True)
    out = op(xt)
    weights = rng.normal(size=out.shape)
    (out * Tensor(weights)).sum().backward()
    eps, worst = 1e-6, 0.0
    flat = xt.data.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        with no_grad():
            flat[i] = saved + eps
            up = float((op(xt).data * weights).sum())
            flat[i] = saved - eps
            down = float((op(xt).data * weights).sum())
        flat[i] = saved
        worst = max(worst, abs((up - down) / (2 * eps) - xt.grad.reshape(-1)[i]))
    return worst


def test_a_wrong_backward_is_caught(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    assert finite_difference_error(lambda t: t.tanh(), x, np.random.default_rng(1)) < 1e-6

    def wrong_tanh(self):  # the exercise's mistake: 1 - tanh instead of 1 - tanh^2
        out = np.tanh(self.data)
        return Tensor.from_op(out, (self,), lambda g: self.add_grad(g * (1 - out)))

    monkeypatch.setattr(Tensor, "tanh", wrong_tanh)
    assert np.allclose(Tensor(x).tanh().data, np.tanh(x))  # the forward value is still right
    assert finite_difference_error(lambda t: t.tanh(), x, np.random.default_rng(1)) > 1e-2


# ---------------------------------------------------------------- exercise 2


def test_repeat_kv_is_np_repeat():
    rng = np.random.default_rng(0)
    batch, kv_heads, seq, head_dim, n_rep = 2, 2, 5, 4, 2
    k = rng.normal(size=(batch, kv_heads, seq, head_dim))
    v = rng.normal(size=(batch, kv_heads, seq, head_dim))
    q = rng.normal(size=(batch, kv_heads * n_rep, seq, head_dim))
    theirs = modeling_llama.repeat_kv(torch.from_numpy(k), n_rep).numpy()
    assert np.array_equal(np.repeat(k, n_rep, axis=1), theirs)  # the answer
    assert not np.array_equal(np.tile(k, (1, n_rep, 1, 1)), theirs)  # the tempting wrong one

    ours = F.attention(Tensor(q), Tensor(np.repeat(k, n_rep, axis=1)),
                       Tensor(np.repeat(v, n_rep, axis=1)), causal=True).data

    class Module(torch.nn.Module):
        num_key_value_groups = n_rep

    mask = torch.triu(torch.full((seq, seq), float("-inf"), dtype=torch.float64), diagonal=1)
    out, _ = modeling_llama.eager_attention_forward(
        Module().eval(), torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), mask,
        scaling=head_dim**-0.5)
    # transposed back to (batch, heads, seq, head_dim); Llama's softmax runs in float32
    assert np.allclose(ours, out.transpose(1, 2).numpy(), atol=1e-6)
    assert not np.allclose(ours, F.attention(Tensor(q), Tensor(np.tile(k, (1, n_rep, 1, 1))),
                                             Tensor(np.tile(v, (1, n_rep, 1, 1)))).data, atol=1e-3)


# ---------------------------------------------------------------- exercise 3


def test_rope_scores_depend_on_distance_only():
    torch.manual_seed(0)
    head_dim = 16
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, rope_theta=10000.0)
    rope = modeling_llama.LlamaRotaryEmbedding(config)
    q = torch.randn(1, 1, 1, head_dim, dtype=torch.float64)
    k = torch.randn(1, 1, 1, head_dim, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos, sin = rope(q, torch.tensor([[m, n]]))
        cos, sin = cos.double(), sin.double()
        q_m, _ = modeling_llama.apply_rotary_pos_emb(q, q, cos[:, :1], sin[:, :1])
        k_n, _ = modeling_llama.apply_rotary_pos_emb(k, k, cos[:, 1:], sin[:, 1:])
        return float((q_m * k_n).sum())

    for m, n, s in [(5, 2, 7), (30, 30, 100), (3, 9, 40)]:
        assert score(m, n) == pytest.approx(score(m + s, n + s), abs=1e-5)
        assert abs(score(m, n) - score(m, n + 1)) > 1e-3
