"""Layer-sized ops with hand-written backward passes.

Each could be composed from the small ops in tensor.py, and autograd would get the gradient
right; writing the backward by hand keeps the graph short (one node instead of ten) and avoids
materialising intermediates, which is most of the speed of a numpy framework.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scratch.nn.tensor import Tensor, unbroadcast


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, with weight shaped (out, in) as in PyTorch."""
    out = x.data @ weight.data.T
    if bias is not None:
        out += bias.data

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        if weight.requires_grad:
            weight.add_grad(g2.T @ x.data.reshape(-1, x.shape[-1]))
        if bias is not None and bias.requires_grad:
            bias.add_grad(g2.sum(axis=0))
        if x.requires_grad:  # skipped for the input batch, which never needs a gradient
            x.add_grad(g @ weight.data)

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(out, parents, backward)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))  # shift: exp never overflows
    out = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        x.add_grad(out * (g - (g * out).sum(axis=axis, keepdims=True)))

    return Tensor.from_op(out, (x,), backward)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        x.add_grad(g - np.exp(out) * g.sum(axis=axis, keepdims=True))

    return Tensor.from_op(out, (x,), backward)


def cross_entropy(logits: Tensor, targets: np.ndarray) -> Tensor:
    """Mean negative log-likelihood of integer `targets` under softmax(logits) (last axis)."""
    classes = logits.shape[-1]
    z = logits.data.reshape(-1, classes)
    targets = np.asarray(targets).reshape(-1)
    rows = np.arange(len(targets))
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    loss = np.mean(log_norm - shifted[rows, targets])

    def backward(g):
        # d loss / d z = (softmax(z) - one_hot(target)) / N
        p = np.exp(shifted - log_norm[:, None])
        p[rows, targets] -= 1
        p *= g / len(targets)
        logits.add_grad(p.reshape(logits.shape))

    return Tensor.from_op(np.asarray(loss, dtype=z.dtype), (logits,), backward)


def embedding(weight: Tensor, indices: np.ndarray) -> Tensor:
    """Rows of `weight` picked by integer `indices`: a one-hot matmul without the one-hots."""
    indices = np.asarray(indices)

    def backward(g):
        # Rows used several times sum their gradients. Sorting the indices and summing runs
        # with add.reduceat is several times faster than np.add.at's unbuffered scatter.
        flat = indices.reshape(-1)
        order = np.argsort(flat, kind="stable")
        sorted_ids = flat[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        grad = np.zeros_like(weight.data)
        grad[sorted_ids[starts]] = np.add.reduceat(
            g.reshape(-1, weight.shape[1])[order], starts, axis=0
        )
        weight.add_grad(grad)

    return Tensor.from_op(weight.data[indices], (weight,), backward)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalise the last axis to mean 0, variance 1, then scale and shift."""
    mean = x.data.mean(axis=-1, keepdims=True)
    centered = x.data - mean
    inv_std = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    normed = centered * inv_std
    out = normed * weight.data + bias.data

    def backward(g):
        if weight.requires_grad:
            weight.add_grad(unbroadcast(g * normed, weight.shape))
        if bias.requires_grad:
            bias.add_grad(unbroadcast(g, bias.shape))
        if x.requires_grad:
            g_normed = g * weight.data
            x.add_grad(
                inv_std
                * (
                    g_normed
                    - g_normed.mean(axis=-1, keepdims=True)
                    - normed * (g_normed * normed).mean(axis=-1, keepdims=True)
                )
            )

    return Tensor.from_op(out, (x, weight, bias), backward)


def dropout(x: Tensor, p: float, training: bool, rng: np.random.Generator) -> Tensor:
    """Zero each element with probability p; scale the rest by 1/(1-p) so the mean is kept."""
    if not training or p == 0:
        return x
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / (1 - p)
    return Tensor.from_op(x.data * mask, (x,), lambda g: x.add_grad(g * mask))


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over shapes (..., T, d); causal hides the future."""
    scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 arrays float32
    # Batched matmul on strided views (heads sliced out of one qkv array) skips BLAS: copy once.
    q_data, k_data, v_data = (np.ascontiguousarray(t.data) for t in (q, k, v))
    scores = q_data @ np.swapaxes(k_data, -1, -2)
    scores *= scale
    if causal:
        t_q, t_k = scores.shape[-2:]
        future = np.triu(np.ones((t_q, t_k), dtype=bool), k=1 + t_k - t_q)
        scores[..., future] = -np.inf  # exp(-inf) = 0: no weight on later positions
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = probs @ v_data

    def backward(g):
        g = np.ascontiguousarray(g)
        if v.requires_grad:
            v.add_grad(np.swapaxes(probs, -1, -2) @ g)
        g_scores = g @ np.swapaxes(v_data, -1, -2)  # gradient w.r.t. probs, then in place:
        # softmax backward, then the 1/sqrt(d) scale; masked entries have probs 0, so grad 0
        g_scores -= (g_scores * probs).sum(axis=-1, keepdims=True)
        g_scores *= probs
        g_scores *= scale
        if q.requires_grad:
            q.add_grad(g_scores @ k_data)
        if k.requires_grad:
            k.add_grad(np.swapaxes(g_scores, -1, -2) @ q_data)

    return Tensor.from_op(out, (q, k, v), backward)


def conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0
) -> Tensor:
    """2-D cross-correlation, x (N, C, H, W) with weight (O, C, kh, kw), via im2col.

    im2col copies every kh x kw patch into a row of a matrix; the convolution is then one big
    matmul with the flattened filters, which BLAS does fast.
    """
    n, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c != c_w:
        raise ValueError(f"conv2d: input has {c} channels, weight expects {c_w}")
    xp = np.pad(x.data, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    h_out, w_out = windows.shape[2], windows.shape[3]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out, c * kh * kw)
    w2 = weight.data.reshape(o, -1)
    out = cols @ w2.T
    if bias is not None:
        out += bias.data
    out = out.reshape(n, h_out, w_out, o).transpose(0, 3, 1, 2)

    def backward(g):
        g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)
        if weight.requires_grad:
            weight.add_grad((g2.T @ cols).reshape(weight.shape))
        if bias is not None and bias.requires_grad:
            bias.add_grad(g2.sum(axis=0))
        if x.requires_grad:  # col2im: scatter each patch's gradient back where it came from
            g_cols = (g2 @ w2).reshape(n, h_out, w_out, c, kh, kw)
            g_xp = np.zeros_like(xp)
            for i in range(kh):
                for j in range(kw):
                    g_xp[
                        :, :, i : i + stride * h_out : stride, j : j + stride * w_out : stride
                    ] += g_cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
            x.add_grad(g_xp[:, :, padding : padding + h, padding : padding + w])

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(np.ascontiguousarray(out), parents, backward)


def max_pool2d(x: Tensor, size: int = 2) -> Tensor:
    """Max over non-overlapping size x size windows (stride = size; edges that don't fit drop)."""
    n, c, h, w = x.shape
    h_out, w_out = h // size, w // size
    cropped = x.data[:, :, : h_out * size, : w_out * size]
    windows = (
        cropped.reshape(n, c, h_out, size, w_out, size)
        .transpose(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h_out, w_out, size * size)
    )
    winner = windows.argmax(axis=-1)[..., None]  # first maximum wins ties, as in PyTorch
    out = np.take_along_axis(windows, winner, axis=-1)[..., 0]

    def backward(g):
        g_windows = np.zeros_like(windows)
        np.put_along_axis(g_windows, winner, g[..., None], axis=-1)
        g_x = np.zeros_like(x.data)
        g_x[:, :, : h_out * size, : w_out * size] = (
            g_windows.reshape(n, c, h_out, w_out, size, size)
            .transpose(0, 1, 2, 4, 3, 5)
            .reshape(n, c, h_out * size, w_out * size)
        )
        x.add_grad(g_x)

    return Tensor.from_op(out, (x,), backward)
