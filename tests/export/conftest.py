"""Fixtures for the export tests: a small Llama whose logits are far from tied.

A model with unit norm weights and std-0.02 init gives near-uniform logits, where a wrong tensor
mapping can still pick the same argmax; randomised norms and a larger init make every mistake
visible in the greedy tokens.

Two tokenizers: ours (byte-level BPE, ChatML) and a TinyLlama-style one (SentencePiece-BPE with
byte fallback, Zephyr chat template), so both GGUF vocabulary kinds are exported and run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEXTS = ["What is 12+35? The answer is 47. def foo(x): return x * 2\n" * 3,
         "Hello world, how are you today? I'm fine, thanks.\n"] * 40
# One non-ASCII word, so the TinyLlama-style vocabulary has multi-byte pieces besides byte fallback.
LLAMA_TEXTS = TEXTS + ["Grüße aus München, über 2024 Tage.\n"] * 20


# TinyLlama-Chat-v1.0's template (Zephyr style), as its tokenizer_config.json has it.
TINYLLAMA_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
    "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' "
    "+ message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]


def train_llama_tokenizer(texts: list[str] = LLAMA_TEXTS, vocab_size: int = 400):
    """A tokenizer shaped like TinyLlama's (Llama 2's) tokenizer.json, trained on `texts`.

    That file is a SentencePiece BPE model converted by transformers: ids 0-2 are <unk>, <s>,
    </s>; ids 3-258 the byte-fallback tokens <0x00>..<0xFF>; then "▁"-marked pieces. Its
    merges are every pair of pieces whose concatenation is a piece, ordered by the result's
    rank; the normalizer prepends "▁" and turns spaces into "▁" (no pre-tokenizer); <s> is
    added by the post-processor. A small alphabet leaves most non-ASCII text to byte fallback.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    # Llama's SentencePiece learnt pieces within words and split digits, so train that way...
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        pre_tokenizers.Digits(individual_digits=True)])
    trainer_tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=LLAMA_SPECIALS, limit_alphabet=50,
        show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]["vocab"]
    pieces = [p for p, _ in sorted(trained.items(),
                                   key=lambda kv: kv[1]) if p not in LLAMA_SPECIALS]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    vocab = {p: i for i, p in enumerate(LLAMA_SPECIALS + byte_tokens + pieces)}
    merges = sorted(((a, b) for a in pieces for b in pieces if a + b in vocab),
                    key=lambda m: (vocab[m[0] + m[1]], vocab[m[0]], vocab[m[1]]))

    # ...then rebuild it the way the converted Llama tokenizer.json is laid out.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(LLAMA_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="</s>", add_bos_token=True, add_eos_token=False, model_max_length=2048,
        clean_up_tokenization_spaces=False, chat_template=TINYLLAMA_TEMPLATE)


def make_random_llama(out: Path, seed: int = 0, tokenizer=None, **overrides) -> Path:
    """A random Llama with our tokenizer (default) or the given one, saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tokenizer import train_tokenizer

    tok = tokenizer if tokenizer is not None else train_tokenizer(TEXTS, 400)
    settings = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                    num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    bos_token_id=tok.bos_token_id if tok.bos_token else tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
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

    return {t: Path(export_gguf(random_llama, random_llama / "gguf" / f"rand-llama-{t}.gguf",
                                t)["path"])
            for t in OUTTYPES}


@pytest.fixture(scope="session")
def random_tinyllama(tmp_path_factory) -> Path:
    """A random Llama with a TinyLlama-style tokenizer and chat template."""
    return make_random_llama(tmp_path_factory.mktemp("export") / "rand-tinyllama",
                             tokenizer=train_llama_tokenizer())
