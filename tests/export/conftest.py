"""Fixtures for the export tests: a small Llama whose logits are far from tied.

A model with unit norm weights and std-0.02 init gives near-uniform logits, where a wrong tensor
mapping can still pick the same argmax; randomised norms and a larger init make every mistake
visible in the greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TEXTS = ["What is 12+35? The answer is 47. def foo(x): return x * 2\n" * 3,
         "Hello world, how are you today? I'm fine, thanks.\n"] * 40


def make_random_llama(out: Path, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS, 400)
    settings = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, initializer_range=0.2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory) -> Path:
    return make_random_llama(tmp_path_factory.mktemp("export") / "rand-llama")


@pytest.fixture(scope="session")
def random_gguf(random_llama: Path) -> dict[str, Path]:
    """The random model exported in every outtype, into its gguf/ folder."""
    from training.export.gguf import OUTTYPES, export_gguf

    return {t: Path(export_gguf(random_llama, random_llama / "gguf" / f"rand-llama-{t}.gguf", t)["path"])
            for t in OUTTYPES}
