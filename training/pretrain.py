"""Pretrain a tiny Llama from scratch on the local corpus: next-token prediction on raw text.

    python -m training.pretrain --out models/tiny-base [--steps N] [--seed S] [--resume]

Settings come from <out>/recipe.yaml (section `pretrain`) when it exists, then from flags.
Writes a transformers model folder: config.json, model.safetensors, tokenizer files, a model
card (README.md), loss.png and metrics.json.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from serving import device
from serving.helpers import ArgumentParser, UsageError, cli_main
from training import corpus
from training import tokenizer as tokenizer_lib
from training.stage import (
    CHECKPOINT,
    Finish,
    add_force_flag,
    check_output,
    device_field,
    finish_stage,
    parse_settings,
    precision_field,
    require_positive,
)
from training.trainer import TrainConfig, start_run, train


@dataclass
class PretrainSettings:
    """The `pretrain` section of a recipe (see models/tiny-base/recipe.yaml)."""

    vocab_size: int = field(default=1024, metadata={"help": "tokenizer vocabulary size"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    num_hidden_layers: int = field(default=4, metadata={"help": "transformer layers"})
    num_attention_heads: int = field(default=4, metadata={"help": "query heads"})
    num_key_value_heads: int = field(default=2, metadata={
        "help": "key/value heads (grouped-query attention: query heads share them)"})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width"})
    seq_len: int = field(default=128, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=32, metadata={"help": "global batch, in sequences"})
    steps: int = field(default=1400, metadata={"help": "optimizer steps"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (default 2e-3)"})
    warmup: int = field(default=150, metadata={"help": "learning-rate warm-up steps"})
    seed: int = field(default=0, metadata={"help": "seed for init and data order"})
    pydoc_chars: int = field(default=1_500_000,
                             metadata={"help": "characters of pydoc text in the corpus"})
    fact_repeats: dict = field(default_factory=lambda: dict(corpus.DEFAULT_FACT_REPEATS),
                               metadata={"help": "times each task's facts are repeated, JSON"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints"})
    device: str = device_field()
    precision: str = precision_field()

    def check(self) -> None:
        require_positive(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                         hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                         num_attention_heads=self.num_attention_heads,
                         num_key_value_heads=self.num_key_value_heads,
                         intermediate_size=self.intermediate_size, pydoc_chars=self.pydoc_chars)
        if self.seq_len < 8:
            raise UsageError(f"seq-len must be >= 8, got {self.seq_len}")
        if self.vocab_size < 300:
            raise UsageError(f"vocab_size must be >= 300 (256 bytes + specials), "
                             f"got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads or \
                self.num_attention_heads % self.num_key_value_heads:
            raise UsageError("hidden_size must divide by heads, and heads by key/value heads")
        if self.warmup < 0 or self.checkpoint_every < 0:
            raise UsageError("warmup and checkpoint-every must be >= 0")


def model_config(s: PretrainSettings, vocab_size: int, pad_id: int, eos_id: int) -> LlamaConfig:
    """The Llama architecture at the recipe's sizes (pad doubles as BOS; eos ends a chat turn)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def token_stream(docs: list[str], tok: PreTrainedTokenizerFast) -> np.ndarray:
    """All documents as one array of ids, each followed by <|endoftext|>."""
    ids = tok(docs, add_special_tokens=False, verbose=False)["input_ids"]  # long docs are fine here
    eos = tok.convert_tokens_to_ids(tokenizer_lib.EOS)
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)


@torch.no_grad()
def mean_loss(model, windows: np.ndarray, batch: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(windows[i : i + batch]).to(model.device)
        total += float(model(input_ids=x, labels=x).loss) * len(x)
        count += len(x)
    return total / max(1, count)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path,
                   help="model folder to write (e.g. models/tiny-base)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    add_force_flag(p)
    s, args = parse_settings(p, PretrainSettings, "pretrain", argv)
    out: Path = args.out
    check_output(out, argv=argv, force=args.force, resume=args.resume)
    placement = device.resolve(s.device, s.precision)
    rank, world = start_run(out, s.seed, placement)
    ckpt = out / CHECKPOINT
    data = prepare_data(s, ckpt if args.resume else None)
    config = model_config(s, len(data.tok), data.tok.pad_token_id, data.tok.eos_token_id)
    torch.manual_seed(s.seed)
    model = LlamaForCausalLM(config)
    if rank == 0:
        print(f"model: {n_parameters(model) / 1e6:.2f}M parameters; data: {len(data.stream):,} "
              f"tokens ({len(data.train):,} windows of {s.seq_len})")
    cfg = TrainConfig(steps=s.steps, lr=s.lr, warmup=min(s.warmup, s.steps // 2 or 1),
                      batch_size=s.batch_size, seed=s.seed, checkpoint_every=s.checkpoint_every)
    result = train(model, data.batch, len(data.train), cfg, ckpt, resume=args.resume,
                   desc="pretrain", save_extra=data.tok.save_pretrained, settings=asdict(s),
                   placement=placement)
    if rank != 0:
        return
    metrics = run_metrics(model, data, result, s, world, placement)
    finish_stage(out, Finish(functools.partial(save, model, data.tok),
                             {**metrics, "settings": asdict(s), "made_from": {}},
                             result.history, f"{out.name}: a tiny Llama pretrained from scratch",
                             functools.partial(card, config, data, s, metrics)), ckpt)
    print(json.dumps(metrics))
    print(f"saved {out}")


@dataclass
class PretrainData:
    """The corpus as the tokenizer cuts it: training and validation windows of seq_len ids."""

    docs: list[str]
    tok: PreTrainedTokenizerFast
    stream: np.ndarray
    train: np.ndarray
    val: np.ndarray

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.train[idx])
        return {"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x)}


def prepare_data(s: PretrainSettings, resume_from: Path | None) -> PretrainData:
    """Documents, tokenizer, windows. On resume, the checkpoint's tokenizer, so ids stay."""
    docs = corpus.build_documents(s.pydoc_chars, s.fact_repeats, seed=s.seed)
    if resume_from is not None and (resume_from / "tokenizer.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(resume_from)
    else:
        tok = tokenizer_lib.train_tokenizer(list(dict.fromkeys(docs)), s.vocab_size)  # unique docs
    stream = token_stream(docs, tok)
    n_windows = len(stream) // s.seq_len
    if n_windows < 2:
        raise UsageError(f"the corpus has {len(stream):,} tokens: too few for seq-len {s.seq_len}; "
                         "raise pydoc_chars in the recipe")
    windows = stream[: n_windows * s.seq_len].reshape(n_windows, s.seq_len)
    n_val = max(1, n_windows // 50)
    return PretrainData(docs, tok, stream, windows[:-n_val], windows[-n_val:])


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_metrics(model, data: PretrainData, result, s: PretrainSettings, world: int,
                placement: device.Placement) -> dict:
    """metrics.json's numbers: size, throughput, training and validation loss."""
    val_loss = mean_loss(model, data.val)
    return {
        "parameters": n_parameters(model),
        "steps": s.steps,
        "tokens_seen": result.tokens,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9)),
        "final_train_loss": result.history[-1][1],
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 3),
        "world_size": world,
        **placement.record(),
        "rank_checksums": result.rank_checksums,
    }


def save(model, tok: PreTrainedTokenizerFast, folder: Path) -> None:
    with device.on_cpu_for_saving(model):  # float32 safetensors, whatever the device
        model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def card(config: LlamaConfig, data: PretrainData, s: PretrainSettings, metrics: dict,
         _evals: dict) -> dict:
    settings = asdict(s)
    return {
        "What": "A Llama-architecture causal language model built by `python -m "
                "training.pretrain`. It continues text; it has not learned to chat (see the "
                "fine-tuned model).",
        "Config": {k: getattr(config, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads")},
        "Data": f"{len(data.docs):,} documents: Python standard-library documentation (pydoc) "
                f"and plain-text facts from the training split of the chat tasks; "
                f"{len(data.stream):,} tokens.",
        "Training": {k: settings[k] for k in ("steps", "batch_size", "seq_len", "lr", "warmup",
                                              "seed")},
        "Metrics": {k: v for k, v in metrics.items() if k != "rank_checksums"},
        "Loss curve": "![loss](loss.png)",
    }


if __name__ == "__main__":
    cli_main(main)()
