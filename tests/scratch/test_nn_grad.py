"""Every scratch op's forward value and gradient against PyTorch (float64) and finite differences.

Each case builds random inputs of random shapes, pushes loss = sum(op(inputs) * R) for a fixed
random R through both frameworks, and compares d loss / d input for every input.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from scratch.nn import functional as F
from scratch.nn.tensor import Tensor, concat, no_grad, where

REL_TOL = 1e-6


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def pos(rng, *shape):  # strictly positive inputs for log, division, fractional powers
    return rng.uniform(0.5, 2.0, shape)


def torch_mha(qkv, n_head):
    b, t, three_dim = qkv.shape
    q, k, v = qkv.reshape(b, t, 3, n_head, -1).permute(2, 0, 3, 1, 4)
    heads = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
    return heads.transpose(1, 2).reshape(b, t, three_dim // 3)


def torch_llama_attention(q, k, v, n_head, n_kv, cos, sin):
    """Hugging Face's Llama attention on projections q (B, T, H*d), k, v (B, T, KV*d)."""
    b, t, _ = q.shape
    q, k, v = (x.reshape(b, t, -1, q.shape[-1] // n_head).transpose(1, 2) for x in (q, k, v))
    q, k = apply_rotary_pos_emb(q, k, torch.from_numpy(cos)[None], torch.from_numpy(sin)[None])
    group = n_head // n_kv
    out = TF.scaled_dot_product_attention(q, repeat_kv(k, group), repeat_kv(v, group),
                                          is_causal=True)
    return out.transpose(1, 2).reshape(b, t, -1)


def case_list(rng: np.random.Generator):
    """(name, scratch_fn, torch_fn, inputs) with shapes drawn from rng."""
    m, n, k, b = (int(v) for v in rng.integers(2, 7, size=4))
    idx = rng.integers(0, m, size=7)  # repeated indices: gradients must accumulate
    targets = rng.integers(0, n, size=m)
    seq, heads, d = int(rng.integers(2, 6)), 2, int(rng.integers(2, 5))
    mask = rng.random((m, n)) > 0.5
    cos, sin = F.rope_tables(np.arange(seq) + int(rng.integers(0, 50)), 2 * d, dtype=np.float64)
    rows = rng.permutation(b * m)[: k + 1]  # distinct positions, any order
    return [
        (
            "add_broadcast",
            lambda x, y: x + y,
            lambda x, y: x + y,
            [rng.normal(size=(m, n)), rng.normal(size=(n,))],
        ),
        (
            "sub_broadcast",
            lambda x, y: x - y,
            lambda x, y: x - y,
            [rng.normal(size=(m, 1)), rng.normal(size=(m, n))],
        ),
        (
            "mul_broadcast",
            lambda x, y: x * y,
            lambda x, y: x * y,
            [rng.normal(size=(b, m, n)), rng.normal(size=(m, 1))],
        ),
        ("div", lambda x, y: x / y, lambda x, y: x / y, [rng.normal(size=(m, n)), pos(rng, m, n)]),
        ("rdiv_scalar", lambda x: 2.0 / x, lambda x: 2.0 / x, [pos(rng, m, n)]),
        ("pow", lambda x: x**2.5, lambda x: x**2.5, [pos(rng, m, n)]),
        ("neg", lambda x: -x, lambda x: -x, [rng.normal(size=(m, n))]),
        (
            "matmul_batched",
            lambda x, y: x @ y,
            lambda x, y: x @ y,
            [rng.normal(size=(b, m, k)), rng.normal(size=(k, n))],
        ),
        (
            "matmul_both_batched",
            lambda x, y: x @ y,
            lambda x, y: x @ y,
            [rng.normal(size=(b, m, k)), rng.normal(size=(b, k, n))],
        ),
        ("sum_all", lambda x: x.sum(), lambda x: x.sum(), [rng.normal(size=(m, n))]),
        ("sum_axis", lambda x: x.sum(axis=1), lambda x: x.sum(dim=1), [rng.normal(size=(b, m, n))]),
        (
            "mean_keepdims",
            lambda x: x.mean(axis=0, keepdims=True),
            lambda x: x.mean(dim=0, keepdim=True),
            [rng.normal(size=(m, n))],
        ),
        ("mean_all", lambda x: x.mean(), lambda x: x.mean(), [rng.normal(size=(b, m, n))]),
        ("max_axis", lambda x: x.max(axis=-1), lambda x: x.amax(dim=-1), [rng.normal(size=(m, n))]),
        ("max_all", lambda x: x.max(), lambda x: x.amax(), [rng.normal(size=(m, n))]),
        (
            "reshape",
            lambda x: x.reshape(n, m),
            lambda x: x.reshape(n, m),
            [rng.normal(size=(m, n))],
        ),
        (
            "transpose",
            lambda x: x.transpose(2, 0, 1),
            lambda x: x.permute(2, 0, 1),
            [rng.normal(size=(b, m, n))],
        ),
        (
            "getitem_fancy",
            lambda x: x[idx],
            lambda x: x[torch.from_numpy(idx)],
            [rng.normal(size=(m, n))],
        ),
        ("getitem_slice", lambda x: x[1:, ::2], lambda x: x[1:, ::2], [rng.normal(size=(m, n))]),
        (
            "concat",
            lambda x, y: concat([x, y], axis=1),
            lambda x, y: torch.cat([x, y], dim=1),
            [rng.normal(size=(m, n)), rng.normal(size=(m, k))],
        ),
        (
            "where",
            lambda x, y: where(mask, x, y),
            lambda x, y: torch.where(torch.from_numpy(mask), x, y),
            [rng.normal(size=(m, n)), rng.normal(size=(m, n))],
        ),
        ("exp", lambda x: x.exp(), torch.exp, [rng.normal(size=(m, n))]),
        ("log", lambda x: x.log(), torch.log, [pos(rng, m, n)]),
        ("tanh", lambda x: x.tanh(), torch.tanh, [rng.normal(size=(m, n))]),
        ("sigmoid", lambda x: x.sigmoid(), torch.sigmoid, [rng.normal(size=(m, n))]),
        ("relu", lambda x: x.relu(), torch.relu, [rng.normal(size=(m, n))]),
        (
            "gelu",
            lambda x: x.gelu(),
            lambda x: TF.gelu(x, approximate="tanh"),
            [rng.normal(size=(m, n)) * 2],
        ),
        (
            "softmax",
            lambda x: F.softmax(x),
            lambda x: torch.softmax(x, -1),
            [rng.normal(size=(b, m, n)) * 3],
        ),
        (
            "softmax_axis0",
            lambda x: F.softmax(x, axis=0),
            lambda x: torch.softmax(x, 0),
            [rng.normal(size=(m, n))],
        ),
        (
            "log_softmax",
            lambda x: F.log_softmax(x),
            lambda x: torch.log_softmax(x, -1),
            [rng.normal(size=(m, n)) * 3],
        ),
        (
            "cross_entropy",
            lambda x: F.cross_entropy(x, targets),
            lambda x: TF.cross_entropy(x, torch.from_numpy(targets)),
            [rng.normal(size=(m, n)) * 3],
        ),
        (
            "embedding",
            lambda w: F.embedding(w, idx.reshape(1, -1)),
            lambda w: TF.embedding(torch.from_numpy(idx.reshape(1, -1)), w),
            [rng.normal(size=(m, n))],
        ),
        (
            "linear",
            lambda x, w, c: F.linear(x, w, c),
            TF.linear,
            [rng.normal(size=(b, m, k)), rng.normal(size=(n, k)), rng.normal(size=(n,))],
        ),
        (
            "layer_norm",
            lambda x, w, c: F.layer_norm(x, w, c),
            lambda x, w, c: TF.layer_norm(x, (n,), w, c),
            [rng.normal(size=(b, m, n)), rng.normal(size=(n,)), rng.normal(size=(n,))],
        ),
        (
            "attention_causal",
            lambda q, kk, v: F.attention(q, kk, v, causal=True),
            lambda q, kk, v: TF.scaled_dot_product_attention(q, kk, v, is_causal=True),
            [rng.normal(size=(b, heads, seq, d)) for _ in range(3)],
        ),
        (
            "attention_full",
            lambda q, kk, v: F.attention(q, kk, v, causal=False),
            lambda q, kk, v: TF.scaled_dot_product_attention(q, kk, v),
            [rng.normal(size=(b, heads, seq, d)) for _ in range(3)],
        ),
        (
            "multi_head_attention",
            lambda x: F.multi_head_attention(x, heads),
            lambda x: torch_mha(x, heads),
            [rng.normal(size=(b, seq, 3 * heads * d))],
        ),
        (
            "rms_norm",
            lambda x, w: F.rms_norm(x, w, 1e-6),
            lambda x, w: TF.rms_norm(x, (n,), w, 1e-6),
            [rng.normal(size=(b, m, n)), rng.normal(size=(n,))],
        ),
        (
            "rope",
            lambda x: F.rope(x, cos, sin),
            lambda x: apply_rotary_pos_emb(
                x, x, torch.from_numpy(cos)[None], torch.from_numpy(sin)[None])[0],
            [rng.normal(size=(b, heads, seq, 2 * d))],
        ),
        (
            "swiglu",
            F.swiglu,
            lambda g, u: TF.silu(g) * u,
            [rng.normal(size=(b, m, n)) * 3, rng.normal(size=(b, m, n))],
        ),
        (
            "llama_attention_gqa",  # 4 query heads sharing 2 key/value heads
            lambda q, kk, v: F.llama_attention(q, kk, v, 4, 2, cos, sin),
            lambda q, kk, v: torch_llama_attention(q, kk, v, 4, 2, cos, sin),
            [rng.normal(size=(b, seq, 4 * 2 * d)), rng.normal(size=(b, seq, 2 * 2 * d)),
             rng.normal(size=(b, seq, 2 * 2 * d))],
        ),
        (
            "llama_attention_mha",
            lambda q, kk, v: F.llama_attention(q, kk, v, heads, heads, cos, sin),
            lambda q, kk, v: torch_llama_attention(q, kk, v, heads, heads, cos, sin),
            [rng.normal(size=(b, seq, heads * 2 * d)) for _ in range(3)],
        ),
        (
            "take_rows",
            lambda x: F.take_rows(x, rows),
            lambda x: x.reshape(-1, n)[torch.from_numpy(rows)],
            [rng.normal(size=(b, m, n))],
        ),
        (
            "conv2d",
            lambda x, w, c: F.conv2d(x, w, c),
            TF.conv2d,
            [
                rng.normal(size=(2, 3, m + 3, n + 3)),
                rng.normal(size=(4, 3, 3, 3)),
                rng.normal(size=(4,)),
            ],
        ),
        (
            "conv2d_stride_pad",
            lambda x, w: F.conv2d(x, w, None, stride=2, padding=1),
            lambda x, w: TF.conv2d(x, w, None, stride=2, padding=1),
            [rng.normal(size=(2, 2, m + 4, n + 4)), rng.normal(size=(3, 2, 3, 2))],
        ),
        (
            "max_pool2d",
            lambda x: F.max_pool2d(x, 2),
            lambda x: TF.max_pool2d(x, 2),
            [rng.normal(size=(2, 3, 2 * m + 1, 2 * n))],
        ),
    ]


CASES = [c[0] for c in case_list(np.random.default_rng(0))]


def get_case(name: str, seed: int):
    rng = np.random.default_rng(seed)
    return next(c for c in case_list(rng) if c[0] == name), rng


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", CASES)
def test_op_matches_pytorch_float64(name, seed):
    (_, ours, theirs, inputs), rng = get_case(name, seed)
    xs = [Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = ours(*xs)
    weights = rng.normal(size=out.shape)
    (out * Tensor(weights)).sum().backward()

    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    t_out = theirs(*ts)
    (t_out * torch.from_numpy(weights)).sum().backward()

    assert out.dtype == np.float64
    assert rel_err(out.data, t_out.detach().numpy()) <= REL_TOL
    for x, t in zip(xs, ts, strict=True):
        assert x.grad.shape == x.shape
        assert rel_err(x.grad, t.grad.numpy()) <= REL_TOL, name


@pytest.mark.parametrize("name", CASES)
def test_op_matches_finite_differences(name):
    (_, ours, _, inputs), rng = get_case(name, 3)
    xs = [Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = ours(*xs)
    weights = rng.normal(size=out.shape)
    (out * Tensor(weights)).sum().backward()

    eps = 1e-6
    for x in xs:
        flat = x.data.reshape(-1)  # a view: editing it perturbs the input in place
        for i in rng.choice(flat.size, size=min(flat.size, 12), replace=False):
            saved = flat[i]
            with no_grad():
                flat[i] = saved + eps
                up = float((ours(*xs).data * weights).sum())
                flat[i] = saved - eps
                down = float((ours(*xs).data * weights).sum())
            flat[i] = saved
            numeric = (up - down) / (2 * eps)
            analytic = x.grad.reshape(-1)[i]
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, i)


def test_dropout_matches_pytorch_with_the_same_mask():
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(5, 7))
    x = Tensor(x_np.copy(), requires_grad=True)
    out = F.dropout(x, 0.3, training=True, rng=np.random.default_rng(1))
    mask = out.data / x_np  # the kept-and-rescaled mask scratch drew
    assert set(np.round(np.unique(mask), 6)) <= {0.0, round(1 / 0.7, 6)}
    out.sum().backward()
    t = torch.tensor(x_np, requires_grad=True)
    (t * torch.from_numpy(mask)).sum().backward()
    assert rel_err(x.grad, t.grad.numpy()) <= REL_TOL
    assert F.dropout(x, 0.3, training=False, rng=np.random.default_rng(1)) is x


def test_cross_entropy_is_stable_for_huge_logits():
    logits = Tensor(np.array([[1000.0, 0.0, -1000.0]]), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([1]))
    loss.backward()
    assert np.isfinite(loss.data) and abs(loss.item() - 1000.0) < 1e-9
    assert np.allclose(logits.grad, [[1.0, -1.0, 0.0]])


def test_gradient_accumulates_when_a_tensor_is_reused():
    x = Tensor(np.array([3.0]), requires_grad=True)
    y = x * x + x  # dy/dx = 2x + 1 = 7, x is used three times
    y.backward()
    assert x.grad[0] == pytest.approx(7.0)


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y._parents == ()


def test_gelu_on_an_array_spanning_several_chunks():
    x_np = np.random.default_rng(0).normal(size=(3, 20001)) * 3  # > 3 chunks, ragged end
    x = Tensor(x_np.copy(), requires_grad=True)
    out = x.gelu()
    out.backward(np.cos(x_np))
    t = torch.tensor(x_np, requires_grad=True)
    t_out = TF.gelu(t, approximate="tanh")
    t_out.backward(torch.from_numpy(np.cos(x_np)))
    assert rel_err(out.data, t_out.detach().numpy()) <= REL_TOL
    assert rel_err(x.grad, t.grad.numpy()) <= REL_TOL


@pytest.mark.parametrize("width", [1, 2, 5, 7, 64, 95])
def test_row_max_equals_numpy_max(width):
    a = np.random.default_rng(width).normal(size=(3, 4, width)).astype(np.float32)
    assert np.array_equal(F.row_max(a), a.max(axis=-1, keepdims=True))
