"""PyTorch twins of scratch/nn layers: the reference the tests and bench/bench_nn.py compare."""

import torch.nn as tnn
import torch.nn.functional as TF


class TorchBlock(tnn.Module):
    """The same pre-norm block as scratch.nn.modules.TransformerBlock, in PyTorch."""

    def __init__(self, dim, n_head):
        super().__init__()
        self.ln1, self.ln2 = tnn.LayerNorm(dim), tnn.LayerNorm(dim)
        self.qkv, self.proj = tnn.Linear(dim, 3 * dim), tnn.Linear(dim, dim)
        self.fc, self.fc_proj = tnn.Linear(dim, 4 * dim), tnn.Linear(4 * dim, dim)
        self.n_head = n_head

    def forward(self, x):
        b, t, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
        heads = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(heads.transpose(1, 2).reshape(b, t, dim))
        return x + self.fc_proj(TF.gelu(self.fc(self.ln2(x)), approximate="tanh"))
