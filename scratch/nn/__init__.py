"""scratch/nn: a neural-network framework from first principles, numpy only.

Read in this order: tensor.py (Tensor and autograd), functional.py (layer-sized ops),
modules.py (layers and models), optim.py (optimizers), data.py, train.py. See docs/nn.md.
"""

from scratch.nn.modules import (
    GPT,
    RNN,
    Conv2d,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    Module,
    Sequential,
    TransformerBlock,
)
from scratch.nn.optim import SGD, AdamW, clip_grad_norm, cosine_lr
from scratch.nn.tensor import Tensor, concat, no_grad, where

__all__ = [
    "GPT", "RNN", "SGD", "AdamW", "Conv2d", "Dropout", "Embedding", "LayerNorm", "Linear",
    "Module", "Sequential", "Tensor", "TransformerBlock", "clip_grad_norm", "concat",
    "cosine_lr", "no_grad", "where",
]  # fmt: skip
