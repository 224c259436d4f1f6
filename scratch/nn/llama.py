"""A Llama-shaped transformer: the architecture of Llama 2/3, Mistral, Qwen2 and SmolLM2.

Beside the GPT in modules.py it changes four things, each one what current open models use:
- RMSNorm instead of LayerNorm (scale only: no mean, no bias);
- rotary position embeddings applied to queries and keys, instead of a learned position table;
- a SwiGLU feed-forward, down(silu(gate(x)) * up(x)), instead of Linear-GELU-Linear;
- optional grouped-query attention: several query heads share one key/value head, which makes
  the KV cache (the memory of generation) that many times smaller.
No layer has a bias; the output layer may reuse the token embedding (tied weights).

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`), so the state
dict is a `LlamaForCausalLM` checkpoint as it is (see hf.py).

Two forward paths share the numpy kernels of functional.py: `Llama.__call__` builds the autograd
graph for training; `Generator` runs without it, keeping each layer's keys and values (the KV
cache) so that each new token costs one position, not the whole sequence again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from scratch.nn import functional as F
from scratch.nn.modules import Linear, Module
from scratch.nn.tensor import DEFAULT_DTYPE, Tensor


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 64
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not divisible by "
                             f"{self.num_attention_heads} heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} query heads cannot share "
                             f"{self.num_key_value_heads} key/value heads evenly")
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} is odd: rotary embeddings rotate pairs")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


def _normal(rng, std: float, shape) -> Tensor:
    return Tensor(rng.normal(0.0, std, shape).astype(DEFAULT_DTYPE), requires_grad=True)


def _linear(rng, n_in: int, n_out: int, std: float) -> Linear:
    layer = Linear(n_in, n_out, bias=False, rng=rng)
    layer.weight = _normal(rng, std, (n_out, n_in))
    return layer


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = Tensor(np.ones(dim, DEFAULT_DTYPE), requires_grad=True)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, self.eps)


class Attention(Module):
    def __init__(self, cfg: LlamaConfig, rng, out_std: float):
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = _linear(rng, d, cfg.num_attention_heads * hd, cfg.init_std)
        self.k_proj = _linear(rng, d, cfg.num_key_value_heads * hd, cfg.init_std)
        self.v_proj = _linear(rng, d, cfg.num_key_value_heads * hd, cfg.init_std)
        self.o_proj = _linear(rng, cfg.num_attention_heads * hd, d, out_std)
        self.n_head, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads

    def forward(self, x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
        heads = F.llama_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x),
                                  self.n_head, self.n_kv, cos, sin)
        return self.o_proj(heads)


class MLP(Module):
    def __init__(self, cfg: LlamaConfig, rng, out_std: float):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _linear(rng, d, f, cfg.init_std)
        self.up_proj = _linear(rng, d, f, cfg.init_std)
        self.down_proj = _linear(rng, f, d, out_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: LlamaConfig, rng):
        out_std = cfg.init_std / np.sqrt(2 * cfg.num_hidden_layers)  # GPT-2's residual scaling
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rng, out_std)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, rng, out_std)

    def forward(self, x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(Module):
    def __init__(self, cfg: LlamaConfig, rng):
        self.embed_tokens = Module()
        self.embed_tokens.weight = _normal(rng, cfg.init_std, (cfg.vocab_size, cfg.hidden_size))
        self.layers = [DecoderLayer(cfg, rng) for _ in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(Module):
    """Token ids -> next-token logits. `model.*` and `lm_head` as in LlamaForCausalLM."""

    def __init__(self, cfg: LlamaConfig, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        self.config = cfg
        self.model = Backbone(cfg, rng)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(rng, cfg.hidden_size, cfg.vocab_size, cfg.init_std)

    @property
    def output_weight(self) -> Tensor:
        """The output layer's (vocab, hidden) matrix: the embedding itself when tied."""
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings \
            else self.lm_head.weight

    def hidden(self, idx: np.ndarray) -> Tensor:
        """idx (B, T) -> the last layer's output (B, T, hidden), before the final norm."""
        t = idx.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {t} tokens exceeds the model's "
                             f"{self.config.max_position_embeddings}")
        cos, sin = F.rope_tables(np.arange(t), self.config.head_dim, self.config.rope_theta)
        x = F.embedding(self.model.embed_tokens.weight, idx)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return x

    def forward(self, idx: np.ndarray, rows: np.ndarray | None = None) -> Tensor:
        """Logits (B, T, vocab); with `rows` (flat indices into B*T) only at those positions,
        (len(rows), vocab): the loss of a chat model needs the reply's positions only."""
        x = self.hidden(idx)
        if rows is not None:
            x = F.take_rows(x, rows)
        return F.linear(self.model.norm(x), self.output_weight)


class Generator:
    """Greedy decoding with a KV cache of our own, in plain numpy (no autograd graph).

    Each layer keeps the rotated keys and the values of every position so far in arrays of
    shape (B, kv_heads, max_len, head_dim); a step computes queries, keys and values for the
    new positions only and attends over the cache. Prompts are decoded in batches of equal
    length (no padding, no masks), which for short chat prompts is nearly all of them.
    """

    def __init__(self, model: Llama):
        self.cfg = model.config
        self.weights = {name: p.data for name, p in model.named_parameters()}
        self.out_weight = model.output_weight.data

    def _w(self, name: str) -> np.ndarray:
        return self.weights[name]

    def forward(self, ids: np.ndarray, cache: list[list[np.ndarray]], start: int) -> np.ndarray:
        """Logits of the last position of ids (B, T) at positions start..start+T-1; the cache
        (per layer [keys, values]) is filled in place at those positions."""
        cfg = self.cfg
        b, t = ids.shape
        hd, n_kv = cfg.head_dim, cfg.num_key_value_heads
        group = cfg.num_attention_heads // n_kv
        cos, sin = F.rope_tables(np.arange(start, start + t), hd, cfg.rope_theta)
        scale = 1.0 / np.sqrt(hd)
        x = self._w("model.embed_tokens.weight")[ids]
        for i, (keys, values) in enumerate(cache):
            p = f"model.layers.{i}."
            h = F.rms_norm_np(x, self._w(p + "input_layernorm.weight"), cfg.rms_norm_eps)[0]
            h2 = h.reshape(b * t, -1)
            q = (h2 @ self._w(p + "self_attn.q_proj.weight").T).reshape(b, t, -1)
            k = (h2 @ self._w(p + "self_attn.k_proj.weight").T).reshape(b, t, -1)
            v = (h2 @ self._w(p + "self_attn.v_proj.weight").T).reshape(b, t, -1)
            q = F.rope_np(F.split_heads(q, n_kv, group), cos, sin)
            q *= np.float32(scale)
            keys[:, :, start : start + t] = F.rope_np(F.split_heads(k, n_kv, 1)[:, :, 0], cos, sin)
            values[:, :, start : start + t] = F.split_heads(v, n_kv, 1)[:, :, 0]
            k_all = keys[:, :, None, : start + t]
            probs = F._attention_probs(q, k_all, causal=True)
            heads = F.merge_heads(probs @ values[:, :, None, : start + t])
            x = x + (heads.reshape(b * t, -1) @ self._w(p + "self_attn.o_proj.weight").T
                     ).reshape(b, t, -1)
            h = F.rms_norm_np(x, self._w(p + "post_attention_layernorm.weight"),
                              cfg.rms_norm_eps)[0].reshape(b * t, -1)
            act = F.silu_np(h @ self._w(p + "mlp.gate_proj.weight").T)[0]
            act *= h @ self._w(p + "mlp.up_proj.weight").T
            x = x + (act @ self._w(p + "mlp.down_proj.weight").T).reshape(b, t, -1)
        last = F.rms_norm_np(x[:, -1], self._w("model.norm.weight"), cfg.rms_norm_eps)[0]
        return last @ self.out_weight.T

    def new_cache(self, batch: int, length: int) -> list[list[np.ndarray]]:
        shape = (batch, self.cfg.num_key_value_heads, length, self.cfg.head_dim)
        return [[np.zeros(shape, DEFAULT_DTYPE), np.zeros(shape, DEFAULT_DTYPE)]
                for _ in range(self.cfg.num_hidden_layers)]

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, stop_id: int | None,
               batch_size: int = 256, banned: Sequence[int] = ()) -> list[list[int]]:
        """The greedy continuation of each prompt, cut before its first stop_id (None: never
        stops early); `banned` ids are never chosen (a fixed-length decode for benchmarks)."""
        out: list[list[int]] = [[] for _ in prompts]
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        for _, members in sorted(by_length.items()):
            for at in range(0, len(members), batch_size):
                chunk = members[at : at + batch_size]
                for i, ids in zip(chunk, self._greedy_batch(
                        np.array([prompts[i] for i in chunk], np.int64),
                        max_new_tokens, stop_id, list(banned))):
                    out[i] = ids
        return out

    def _greedy_batch(self, ids: np.ndarray, max_new: int, stop_id: int | None,
                      banned: list[int]) -> list[list[int]]:
        b, t = ids.shape
        max_new = min(max_new, self.cfg.max_position_embeddings - t)
        cache = self.new_cache(b, t + max_new)
        rows: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, bool)
        logits = self.forward(ids, cache, 0)
        for step in range(max_new):
            if banned:
                logits[:, banned] = -np.inf
            tok = logits.argmax(-1)
            for r in np.flatnonzero(~done):
                if tok[r] == stop_id:
                    done[r] = True
                else:
                    rows[r].append(int(tok[r]))
            if done.all() or step == max_new - 1:
                break
            logits = self.forward(tok[:, None], cache, t + step)
        return rows

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits at every position of ids (B, T), position by position through the cache
        (the same numbers as one full forward: a test checks both against transformers)."""
        b, t = ids.shape
        cache = self.new_cache(b, t)
        return np.stack([self.forward(ids[:, i : i + 1], cache, i) for i in range(t)], axis=1)
