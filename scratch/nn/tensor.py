"""Tensor: a numpy array that remembers how it was made, so gradients can flow back.

Every operation on Tensors returns a new Tensor holding (a) the result, (b) its parents and
(c) a small `backward` closure that, given d(loss)/d(result), adds d(loss)/d(parent) to each
parent's `.grad`. `loss.backward()` sorts the graph topologically (every node after all the nodes
that consume it) and runs those closures in that order: reverse-mode automatic differentiation.

This file holds the Tensor and the elementwise/shape/reduction ops; the layer-sized ops
(linear, conv2d, attention, ...) live in functional.py and use the same machinery.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

DEFAULT_DTYPE = np.float32
_CHUNK = 1 << 14  # elements per chunk in chunked elementwise ops: a few of them fit in L2
_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Inside this block ops record no graph (evaluation, sampling, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape`: the gradient of numpy broadcasting.

    If x of shape (3,) was broadcast to (4, 3), each x[i] was used 4 times, so its gradient is
    the sum of the 4 upstream gradients.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


class Tensor:
    # Makes `ndarray + Tensor` call Tensor.__radd__ instead of numpy's elementwise loop.
    __array_priority__ = 100

    def __init__(self, data, requires_grad: bool = False):
        data = np.asarray(data)
        if not np.issubdtype(data.dtype, np.floating):
            data = data.astype(DEFAULT_DTYPE)
        self.data: np.ndarray = data
        self.grad: np.ndarray | None = None
        self.requires_grad = requires_grad
        self._parents: tuple[Tensor, ...] = ()
        self._backward: Callable[[np.ndarray], None] | None = None

    @staticmethod
    def from_op(data: np.ndarray, parents: tuple[Tensor, ...], backward) -> Tensor:
        """The result of an op; it joins the graph only if some parent needs a gradient."""
        out = Tensor.__new__(Tensor)
        out.data, out.grad = data, None
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        out._parents = parents if out.requires_grad else ()
        out._backward = backward if out.requires_grad else None
        return out

    def add_grad(self, grad: np.ndarray) -> None:
        # Out-of-place add: an incoming grad may be a view shared with another node.
        if self.requires_grad:
            self.grad = grad if self.grad is None else self.grad + grad

    def backward(self, grad: np.ndarray | None = None) -> None:
        """Fill .grad of every Tensor that `self` depends on and that requires a gradient."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative depth-first search: deep graphs would overflow recursion
            node, expanded = stack.pop()
            if expanded:
                order.append(node)  # appended only after all its inputs
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if id(p) not in seen)
        self.grad = np.ones_like(self.data) if grad is None else grad
        for node in reversed(order):  # consumers before their inputs
            if node._backward is not None and node.grad is not None:
                node._backward(node.grad)

    # ---- conveniences --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return float(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{flag})"

    def _lift(self, other) -> Tensor:
        return other if isinstance(other, Tensor) else Tensor(np.asarray(other, self.dtype))

    # ---- elementwise arithmetic (with broadcasting) ---------------------------------------
    def __add__(self, other) -> Tensor:
        other = self._lift(other)

        def backward(g):
            self.add_grad(unbroadcast(g, self.shape))
            other.add_grad(unbroadcast(g, other.shape))

        return Tensor.from_op(self.data + other.data, (self, other), backward)

    def __mul__(self, other) -> Tensor:
        other = self._lift(other)

        def backward(g):
            if self.requires_grad:
                self.add_grad(unbroadcast(g * other.data, self.shape))
            if other.requires_grad:
                other.add_grad(unbroadcast(g * self.data, other.shape))

        return Tensor.from_op(self.data * other.data, (self, other), backward)

    def __truediv__(self, other) -> Tensor:
        other = self._lift(other)

        def backward(g):
            if self.requires_grad:
                self.add_grad(unbroadcast(g / other.data, self.shape))
            if other.requires_grad:
                other.add_grad(unbroadcast(-g * self.data / other.data**2, other.shape))

        return Tensor.from_op(self.data / other.data, (self, other), backward)

    def __pow__(self, exponent: float) -> Tensor:
        def backward(g):
            self.add_grad(g * exponent * self.data ** (exponent - 1))

        return Tensor.from_op(self.data**exponent, (self,), backward)

    def __neg__(self) -> Tensor:
        return Tensor.from_op(-self.data, (self,), lambda g: self.add_grad(-g))

    def __sub__(self, other) -> Tensor:
        return self + (-self._lift(other))

    def __radd__(self, other) -> Tensor:
        return self + other

    def __rmul__(self, other) -> Tensor:
        return self * other

    def __rsub__(self, other) -> Tensor:
        return self._lift(other) - self

    def __rtruediv__(self, other) -> Tensor:
        return self._lift(other) / self

    def __matmul__(self, other: Tensor) -> Tensor:
        a, b = self.data, other.data
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError("matmul needs tensors with at least 2 dimensions")

        def backward(g):
            if self.requires_grad:
                self.add_grad(unbroadcast(g @ np.swapaxes(b, -1, -2), a.shape))
            if other.requires_grad:
                other.add_grad(unbroadcast(np.swapaxes(a, -1, -2) @ g, b.shape))

        return Tensor.from_op(a @ b, (self, other), backward)

    # ---- elementwise functions -------------------------------------------------------------
    def exp(self) -> Tensor:
        out = np.exp(self.data)
        return Tensor.from_op(out, (self,), lambda g: self.add_grad(g * out))

    def log(self) -> Tensor:
        return Tensor.from_op(np.log(self.data), (self,), lambda g: self.add_grad(g / self.data))

    def tanh(self) -> Tensor:
        out = np.tanh(self.data)
        return Tensor.from_op(out, (self,), lambda g: self.add_grad(g * (1 - out * out)))

    def sigmoid(self) -> Tensor:
        out = 0.5 * (1 + np.tanh(0.5 * self.data))  # tanh form never overflows exp
        return Tensor.from_op(out, (self,), lambda g: self.add_grad(g * out * (1 - out)))

    def relu(self) -> Tensor:
        out = np.maximum(self.data, 0)
        return Tensor.from_op(out, (self,), lambda g: self.add_grad(g * (out > 0)))

    def gelu(self) -> Tensor:
        """GELU, tanh approximation (GPT-2's; PyTorch's gelu(approximate='tanh')).

        gelu(x) = 0.5 x (1 + t), t = tanh(c (x + k x^3)). It takes ~8 numpy passes; running
        them on cache-sized chunks instead of the whole array makes it ~3x faster.
        """
        c, k = math.sqrt(2 / math.pi), 0.044715  # Python floats: numpy scalars would upcast
        flat = self.data.reshape(-1)
        out = np.empty_like(flat)
        keep_slope = _grad_enabled and self.requires_grad
        slope = np.empty_like(flat) if keep_slope else None  # d gelu / dx, for backward
        for start in range(0, flat.size, _CHUNK):
            x = flat[start : start + _CHUNK]
            x2 = x * x
            t = x2 * (c * k)
            t += c
            t *= x
            np.tanh(t, out=t)
            y = out[start : start + _CHUNK]
            np.add(t, 1, out=y)
            y *= x
            y *= 0.5
            if keep_slope:  # 0.5 * [(1 + t) + x (1 - t^2) c (1 + 3k x^2)]
                d = slope[start : start + _CHUNK]
                np.multiply(t, t, out=d)
                np.subtract(1, d, out=d)
                d *= x
                x2 *= 3 * k * c
                x2 += c
                d *= x2
                d += t
                d += 1
                d *= 0.5

        def backward(g):
            self.add_grad(g * slope.reshape(self.shape))

        return Tensor.from_op(out.reshape(self.shape), (self,), backward)

    # ---- reductions ------------------------------------------------------------------------
    def sum(self, axis=None, keepdims: bool = False) -> Tensor:
        def backward(g):
            if axis is not None and not keepdims:
                g = np.expand_dims(g, axis)
            self.add_grad(np.broadcast_to(g, self.shape))

        return Tensor.from_op(self.data.sum(axis=axis, keepdims=keepdims), (self,), backward)

    def mean(self, axis=None, keepdims: bool = False) -> Tensor:
        axes = range(self.ndim) if axis is None else np.atleast_1d(axis)
        n = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / n)

    def max(self, axis=None, keepdims: bool = False) -> Tensor:
        out = self.data.max(axis=axis, keepdims=True)

        def backward(g):
            if axis is not None and not keepdims:
                g = np.expand_dims(g, axis)
            hit = self.data == out  # ties share the gradient equally, like torch.amax
            self.add_grad(hit * (g / hit.sum(axis=axis, keepdims=True)))

        result = out if keepdims else (out.squeeze(axis) if axis is not None else out.reshape(()))
        return Tensor.from_op(result, (self,), backward)

    # ---- shape ---------------------------------------------------------------------------
    def reshape(self, *shape) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Tensor.from_op(
            self.data.reshape(shape), (self,), lambda g: self.add_grad(g.reshape(self.shape))
        )

    def transpose(self, *axes) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = axes or tuple(reversed(range(self.ndim)))
        inverse = tuple(np.argsort(axes))
        return Tensor.from_op(
            self.data.transpose(axes), (self,), lambda g: self.add_grad(g.transpose(inverse))
        )

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __getitem__(self, index) -> Tensor:
        if isinstance(index, Tensor):
            index = index.data

        def backward(g):
            grad = np.zeros_like(self.data)
            if _is_basic(index):  # ints and slices pick each element at most once
                grad[index] = g
            else:
                np.add.at(grad, index, g)  # fancy indices may repeat: add.at accumulates
            self.add_grad(grad)

        return Tensor.from_op(self.data[index], (self,), backward)


def _is_basic(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """A leaf Tensor (float32 unless `dtype` or a float64 array says otherwise)."""
    array = np.asarray(data, dtype=dtype)
    if dtype is None and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(DEFAULT_DTYPE)
    return Tensor(array, requires_grad=requires_grad)


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    sizes = np.cumsum([t.shape[axis] for t in tensors])[:-1]

    def backward(g):
        for t, part in zip(tensors, np.split(g, sizes, axis=axis), strict=True):
            t.add_grad(part)

    return Tensor.from_op(
        np.concatenate([t.data for t in tensors], axis=axis), tuple(tensors), backward
    )


def where(condition: np.ndarray, a: Tensor, b: Tensor | float) -> Tensor:
    """condition ? a : b, elementwise (condition is a plain boolean array: no gradient)."""
    b = a._lift(b)

    def backward(g):
        if a.requires_grad:
            a.add_grad(unbroadcast(np.where(condition, g, 0), a.shape))
        if b.requires_grad:
            b.add_grad(unbroadcast(np.where(condition, 0, g), b.shape))

    return Tensor.from_op(np.where(condition, a.data, b.data), (a, b), backward)
