"""Layer-sized ops with hand-written backward passes.

Each could be composed from the small ops in tensor.py, and autograd would get the gradient
right; writing the backward by hand keeps the graph short (one node instead of ten) and avoids
materialising intermediates, which is most of the speed of a numpy framework.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scratch.nn.tensor import Tensor


def sum_last(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis (keepdims) as a matrix-vector product with ones: BLAS does it
    ~10x faster than numpy's reduction over short rows, which dominated layer norm."""
    rows = a.reshape(-1, a.shape[-1])  # one 2-D product, not one per leading index
    return (rows @ np.ones(a.shape[-1], a.dtype)).reshape(*a.shape[:-1], 1)


def sum_rows(a: np.ndarray) -> np.ndarray:
    """Sum of the rows of a 2-D array (a bias gradient), the same way."""
    return np.ones(a.shape[0], a.dtype) @ a


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, with weight shaped (out, in) as in PyTorch."""
    # (B, T, in) as one (B*T, in) matrix: numpy would run B small matmuls on the 3-D array
    x2 = x.data.reshape(-1, x.shape[-1])
    out = x2 @ weight.data.T
    if bias is not None:
        out += bias.data

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        if weight.requires_grad:
            weight.add_grad(g2.T @ x2)
        if bias is not None and bias.requires_grad:
            bias.add_grad(sum_rows(g2))
        if x.requires_grad:  # skipped for the input batch, which never needs a gradient
            x.add_grad((g2 @ weight.data).reshape(x.shape))

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(out.reshape(*x.shape[:-1], -1), parents, backward)


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
    shifted = z - row_max(z)
    log_norm = np.log(sum_last(np.exp(shifted))[:, 0])
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
    dim = x.shape[-1]
    normed = x.data - sum_last(x.data) / dim
    inv_std = 1.0 / np.sqrt(sum_last(normed * normed) / dim + eps)
    normed *= inv_std
    out = normed * weight.data
    out += bias.data

    def backward(g):
        if weight.requires_grad:
            weight.add_grad(sum_rows((g * normed).reshape(-1, dim)))
        if bias.requires_grad:
            bias.add_grad(sum_rows(g.reshape(-1, dim)))
        if x.requires_grad:
            # dx = inv_std * (g' - mean(g') - normed * mean(g' * normed)), g' = g * weight
            g_normed = g * weight.data
            dx = normed * (sum_last(g_normed * normed) / dim)
            np.subtract(g_normed, dx, out=dx)
            dx -= sum_last(g_normed) / dim
            dx *= inv_std
            x.add_grad(dx)

    return Tensor.from_op(out, (x, weight, bias), backward)


def dropout(x: Tensor, p: float, training: bool, rng: np.random.Generator) -> Tensor:
    """Zero each element with probability p; scale the rest by 1/(1-p) so the mean is kept."""
    if not training or p == 0:
        return x
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / (1 - p)
    return Tensor.from_op(x.data * mask, (x,), lambda g: x.add_grad(g * mask))


def row_max(a: np.ndarray) -> np.ndarray:
    """max over the last axis, keepdims. numpy's max.reduce along a short contiguous axis is
    slow; folding the row in halves with elementwise maximum is ~2x faster."""
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        folded = np.maximum(a[..., :half], a[..., half : 2 * half])
        if a.shape[-1] % 2:
            np.maximum(folded[..., :1], a[..., -1:], out=folded[..., :1])
        a = folded
    return a


def _attention_probs(q_scaled: np.ndarray, k: np.ndarray, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(d) + mask) for contiguous arrays (..., T, d); q arrives scaled."""
    scores = q_scaled @ np.swapaxes(k, -1, -2)
    if causal:  # adding -inf above the diagonal: exp(-inf) = 0, no weight on the future
        t_q, t_k = scores.shape[-2:]
        scores += np.triu(np.full((t_q, t_k), -np.inf, scores.dtype), k=1 + t_k - t_q)
    scores -= row_max(scores)
    probs = np.exp(scores, out=scores)  # in place: the T x T arrays are the big ones here
    probs /= sum_last(probs)
    return probs


def _attention_grads(g, q_scaled, k, v, probs, scale):
    """Gradients w.r.t. q, k, v of out = probs @ v, given g = d loss / d out."""
    g_v = np.swapaxes(probs, -1, -2) @ g
    g_scores = g @ np.swapaxes(v, -1, -2)  # gradient w.r.t. probs, then softmax backward:
    g_scores -= sum_last(g_scores * probs)
    g_scores *= probs  # masked entries have probs 0, so their gradient is 0
    g_q = g_scores @ k
    g_q *= scale
    return g_q, np.swapaxes(g_scores, -1, -2) @ q_scaled, g_v


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over shapes (..., T, d); causal hides the future."""
    scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 arrays float32
    # Scaling q (d wide) is cheaper than scaling the scores (T wide). Contiguous copies:
    # batched matmul on strided views (e.g. heads sliced from one array) skips BLAS.
    q_scaled = q.data * scale
    k_data, v_data = np.ascontiguousarray(k.data), np.ascontiguousarray(v.data)
    probs = _attention_probs(q_scaled, k_data, causal)

    def backward(g):
        grads = _attention_grads(np.ascontiguousarray(g), q_scaled, k_data, v_data, probs, scale)
        for t, grad in zip((q, k, v), grads, strict=True):
            t.add_grad(grad)

    return Tensor.from_op(probs @ v_data, (q, k, v), backward)


def multi_head_attention(qkv: Tensor, n_head: int, causal: bool = True) -> Tensor:
    """Attention for packed projections: qkv (B, T, 3*dim) -> merged heads (B, T, dim).

    The same maths as splitting qkv into q, k, v, reshaping to (B, heads, T, dim/heads) and
    calling attention(), but as one graph node: its gradient comes back as one (B, T, 3*dim)
    array instead of three zero-padded slices plus transposes.
    """
    b, t, three_dim = qkv.shape
    dim = three_dim // 3
    head_dim = dim // n_head
    scale = 1.0 / math.sqrt(head_dim)
    # (B, T, 3, heads, hd) -> (3, B, heads, T, hd): each head attends in its own subspace
    packed = qkv.data.reshape(b, t, 3, n_head, head_dim).transpose(2, 0, 3, 1, 4)
    q_scaled = packed[0] * scale
    k, v = np.ascontiguousarray(packed[1]), np.ascontiguousarray(packed[2])
    probs = _attention_probs(q_scaled, k, causal)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, dim)

    def backward(g):
        g = np.ascontiguousarray(g.reshape(b, t, n_head, head_dim).transpose(0, 2, 1, 3))
        g_qkv = np.empty((b, t, 3, n_head, head_dim), g.dtype)
        for i, grad in enumerate(_attention_grads(g, q_scaled, k, v, probs, scale)):
            g_qkv[:, :, i] = grad.transpose(0, 2, 1, 3)
        qkv.add_grad(g_qkv.reshape(b, t, three_dim))

    return Tensor.from_op(out, (qkv,), backward)


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


# ---------------------------------------------------------------- the Llama family's ops
#
# Each op below has a plain-numpy kernel (`*_np`, used as is by the KV-cache generation loop
# in llama.py, which needs no gradients) and a Tensor op with a hand-written backward.


def rms_norm_np(x: np.ndarray, weight: np.ndarray, eps: float) -> tuple[np.ndarray, ...]:
    """(out, normed, inv_rms): out = weight * x / sqrt(mean(x^2) + eps) over the last axis."""
    inv_rms = 1.0 / np.sqrt(sum_last(x * x) / x.shape[-1] + eps)
    normed = x * inv_rms
    return normed * weight, normed, inv_rms


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm (Zhang & Sennrich 2019): layer norm without the mean and the bias. Only the
    scale of the activations is normalised, which is all that keeps a deep stack stable, for
    one reduction instead of two."""
    dim = x.shape[-1]
    out, normed, inv_rms = rms_norm_np(x.data, weight.data, eps)

    def backward(g):
        if weight.requires_grad:
            weight.add_grad(sum_rows((g * normed).reshape(-1, dim)))
        if x.requires_grad:
            # dx = inv_rms * (g' - normed * mean(g' * normed)), g' = g * weight
            g_w = g * weight.data
            dx = normed * (sum_last(g_w * normed) / dim)
            np.subtract(g_w, dx, out=dx)
            dx *= inv_rms
            x.add_grad(dx)

    return Tensor.from_op(out, (x, weight), backward)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float = 10000.0,
                dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (len(positions), head_dim) of rotary position embeddings, in the
    "rotate half" layout of Hugging Face's Llama: dimension i pairs with i + head_dim / 2 and
    both turn by the angle position * theta^(-2i / head_dim)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.asarray(positions, np.float64)[:, None] * inv_freq[None]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope_np(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each pair (x_i, x_{i+d/2}) of the last axis by its angle: x cos + rotate_half(x)
    sin, rotate_half(x) = (-x2, x1). x (..., T, d); cos, sin (T, d)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[:, :half]
    out[..., half:] += x[..., :half] * sin[:, half:]
    return out


def rope(x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
    """Rotary position embedding (Su et al. 2021) of x (..., T, d). A rotation's transpose is
    the rotation by minus the angle, so the gradient is rope with -sin."""
    return Tensor.from_op(rope_np(x.data, cos, sin), (x,),
                          lambda g: x.add_grad(rope_np(g, cos, -sin)))


def silu_np(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(silu(a), sigmoid(a)); silu(a) = a * sigmoid(a), sigmoid in tanh form (never overflows)."""
    sig = np.tanh(a * 0.5)
    sig += 1
    sig *= 0.5
    return a * sig, sig


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, the gated feed-forward unit of Llama (Shazeer 2020), as one node."""
    act, sig = silu_np(gate.data)

    def backward(g):
        if up.requires_grad:
            up.add_grad(g * act)
        if gate.requires_grad:
            # d silu / d a = sig * (1 + a * (1 - sig))
            slope = 1 - sig
            slope *= gate.data
            slope += 1
            slope *= sig
            slope *= up.data
            slope *= g
            gate.add_grad(slope)

    return Tensor.from_op(act * up.data, (gate, up), backward)


def split_heads(x: np.ndarray, n_kv: int, group: int) -> np.ndarray:
    """(B, T, n_kv * group * d) -> (B, n_kv, group, T, d): query head h = kv * group + i
    shares key/value head kv (grouped-query attention; group 1 is multi-head attention)."""
    b, t, width = x.shape
    d = width // (n_kv * group)
    return x.reshape(b, t, n_kv, group, d).transpose(0, 2, 3, 1, 4)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """The inverse of split_heads: (B, n_kv, group, T, d) -> (B, T, n_kv * group * d)."""
    b, n_kv, group, t, d = x.shape
    return x.transpose(0, 3, 1, 2, 4).reshape(b, t, n_kv * group * d)


def llama_attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, n_kv: int,
                    cos: np.ndarray, sin: np.ndarray) -> Tensor:
    """Causal grouped-query self-attention with rotary embeddings, as one graph node.

    q (B, T, n_head * d), k and v (B, T, n_kv * d): the projections. Queries and keys are
    rotated by their positions (cos, sin: (T, d)); each group of n_head / n_kv query heads
    attends over one shared key/value head (broadcast in the matmul, never copied), so the
    keys' and values' gradients sum over their group. Returns merged heads (B, T, n_head * d).
    """
    group = n_head // n_kv
    d = q.shape[-1] // n_head
    scale = 1.0 / math.sqrt(d)
    q_rot = rope_np(split_heads(q.data, n_kv, group), cos, sin)
    q_rot *= scale
    k_rot = rope_np(split_heads(k.data, n_kv, 1), cos, sin)
    v_h = np.ascontiguousarray(split_heads(v.data, n_kv, 1))
    probs = _attention_probs(q_rot, k_rot, causal=True)
    out = merge_heads(probs @ v_h)

    def backward(g):
        g_h = np.ascontiguousarray(split_heads(g, n_kv, group))
        g_q, g_k, g_v = _attention_grads(g_h, q_rot, k_rot, v_h, probs, scale)
        if q.requires_grad:
            q.add_grad(merge_heads(rope_np(g_q, cos, -sin)))
        if k.requires_grad:
            g_k = g_k.sum(axis=2, keepdims=True) if group > 1 else g_k
            k.add_grad(merge_heads(rope_np(g_k, cos, -sin)))
        if v.requires_grad:
            v.add_grad(merge_heads(g_v.sum(axis=2, keepdims=True) if group > 1 else g_v))

    return Tensor.from_op(out, (q, k, v), backward)


def take_rows(x: Tensor, rows: np.ndarray) -> Tensor:
    """x (..., D) flattened to rows, then rows[i] picked (each at most once): e.g. only the
    positions whose next token is in the loss go through the output layer."""
    flat = x.data.reshape(-1, x.shape[-1])

    def backward(g):
        grad = np.zeros_like(flat)
        grad[rows] = g
        x.add_grad(grad.reshape(x.shape))

    return Tensor.from_op(flat[rows], (x,), backward)
