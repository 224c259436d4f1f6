"""Fine-tune a base model into a chat model with LoRA (PEFT), loss on assistant tokens only.

    python -m training.finetune --base models/tiny-base --out models/tiny-chat [--steps N] [--resume]
    python -m training.finetune --base HuggingFaceTB/SmolLM2-135M-Instruct --dataset my.jsonl --out models/smol-chat

Settings come from <out>/recipe.yaml (section `finetune`) when it exists, then from flags.
Writes the LoRA adapter (adapter/), the merged model that `AutoModelForCausalLM.from_pretrained`
loads alone, the tokenizer, eval.json (base vs fine-tuned), loss.png and a model card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from training.chatdata import BUILTIN, IGNORE, encode_rows, load_rows, write_jsonl
from training.common import UsageError, atomic_write_json, cli_main
from training.modelfolder import (
    looks_like_hub_id,
    plot_loss,
    publish,
    recipe_settings,
    require_model,
    staging_dir,
    write_card,
)
from training.trainer import TrainConfig, start_run, train

DEFAULTS = {
    "dataset": BUILTIN,
    "split": "train",
    "steps": 1700,
    "batch_size": 64,
    "lr": 3e-3,
    "warmup": 50,
    "lora_r": 32,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "max_len": 256,
    "seed": 0,
    "checkpoint_every": 100,
    "eval_per_task": 200,
}


def load_base(name: str, trust_remote_code: bool):
    """Model and tokenizer from a local folder or a hub id (no remote code unless asked)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(name).exists():
        require_model(name, made_by=f"python -m training.pretrain --out {name}")
    elif not looks_like_hub_id(name):
        raise UsageError(f"base model {name!r} is neither a local folder nor a hub id; "
                         "run: python -m training.pretrain --out models/tiny-base")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load base model {name!r}: {str(err).splitlines()[0]}") from None
    if tok.chat_template is None:
        raise UsageError(f"{name}: tokenizer has no chat template; use a model that has one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def add_lora(model, s: dict):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                        target_modules=s["target_modules"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def settings_from(args: argparse.Namespace) -> dict:
    s = recipe_settings(args.out, "finetune", DEFAULTS, {k: getattr(args, k) for k in ("dataset", "steps", "seed", "batch_size", "checkpoint_every", "lr", "lora_r")})
    if s["steps"] < 1 or s["batch_size"] < 1 or s["lora_r"] < 1:
        raise UsageError("steps, batch size and LoRA rank must be >= 1")
    return s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--base", "--base-model", dest="base", required=True,
                   help="base model: local folder (models/tiny-base) or hub id")
    p.add_argument("--out", required=True, type=Path, help="model folder to write (e.g. models/tiny-chat)")
    p.add_argument("--dataset", help="'builtin' (default), a .jsonl/.json/.parquet file or folder, or a hub id")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lora-r", dest="lora_r", type=int)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    p.add_argument("--bad-rows", choices=["skip", "reject"], default="skip",
                   help="what to do with rows that have an unknown role, empty content or are too long")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the base vs fine-tuned evaluation")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub (off by default: it runs arbitrary code)")
    args = p.parse_args(argv)
    s = settings_from(args)
    out: Path = args.out
    rank, world = start_run(out, s["seed"])

    rows = load_rows(s["dataset"], s["split"])
    model, tok = load_base(args.base, args.trust_remote_code)
    enc = encode_rows(tok, rows, s["max_len"], args.bad_rows)
    torch.manual_seed(s["seed"])
    model = add_lora(model, s)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"LoRA r={s['lora_r']}: {trainable:,} trainable of {total:,} parameters "
              f"({trainable / total:.1%}); {len(enc.input_ids):,} training conversations")
    pad = tok.pad_token_id

    def get_batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        width = max(len(enc.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(enc.input_ids[i])
            ids[row, :n] = torch.tensor(enc.input_ids[i])
            labels[row, :n] = torch.tensor(enc.labels[i])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    cfg = TrainConfig(steps=s["steps"], lr=s["lr"], warmup=min(s["warmup"], s["steps"] // 2 or 1),
                      batch_size=s["batch_size"], seed=s["seed"], weight_decay=0.0,
                      checkpoint_every=s["checkpoint_every"])
    ckpt = out / "checkpoint"
    lengths = np.array([len(ids) for ids in enc.input_ids])  # short and long rows pad apart
    result = train(model, get_batch, len(enc.input_ids), cfg, ckpt, resume=args.resume,
                   desc="finetune", lengths=lengths)
    if rank != 0:
        return

    build = staging_dir(out)
    model.save_pretrained(build / "adapter")  # PEFT format: adapter_config.json + safetensors
    merged = model.merge_and_unload()
    merged.save_pretrained(build, safe_serialization=True)
    tok.save_pretrained(build)
    if s["dataset"] == BUILTIN:
        write_jsonl(build / "data" / "train.jsonl", rows)
    metrics = {
        "base_model": str(args.base),
        "dataset": s["dataset"],
        "conversations": len(enc.input_ids),
        "bad_rows_skipped": sum(enc.bad.values()),
        "steps": s["steps"],
        "train_seconds": round(result.seconds, 1),
        "tokens_seen": result.tokens,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "final_train_loss": result.history[-1][1],
        "world_size": world,
        "rank_checksums": result.rank_checksums,
    }
    atomic_write_json(build / "metrics.json", {**metrics, "history": result.history})
    plot_loss(result.history, build / "loss.png", f"LoRA fine-tuning loss ({out.name})")
    publish(build, out)
    shutil.rmtree(ckpt, ignore_errors=True)

    evals = {}
    if not args.no_eval:
        from training.evaluate import evaluate

        evals["fine_tuned"] = evaluate(out, "torch", s["eval_per_task"])
        if Path(args.base).is_dir():
            evals["base"] = evaluate(args.base, "torch", s["eval_per_task"])
        atomic_write_json(out / "eval.json", evals)
    table = {}
    for which, rep in evals.items():
        for task, r in rep["tasks"].items():
            table[f"{which} {task}"] = f"{r['accuracy']:.1%} ({r['correct']}/{r['n']})"
        table[f"{which} answer perplexity"] = rep["perplexity"]
    write_card(out / "README.md", f"{out.name}: a LoRA chat fine-tune of {args.base}", {
        "What": "A chat model made by `python -m training.finetune`: LoRA adapters trained on "
                "the conversations below, then merged into the base weights. `adapter/` holds "
                "the adapter alone (PEFT format).",
        "Data": f"{s['dataset']}: {len(enc.input_ids):,} conversations"
                + (" (generated: arithmetic, word reversal, the project's ML glossary; "
                   "see data/train.jsonl)" if s["dataset"] == BUILTIN else ""),
        "LoRA": {"r": s["lora_r"], "alpha": s["lora_alpha"], "target_modules": s["target_modules"],
                 "trainable parameters": f"{trainable:,} of {total:,} ({trainable / total:.1%})"},
        "Training": {k: s[k] for k in ("steps", "batch_size", "lr", "warmup", "seed")},
        "Metrics": {k: v for k, v in metrics.items() if k != "rank_checksums"},
        "Evaluation (held-out questions, exact match)": table or "skipped (--no-eval)",
        "Loss curve": "![loss](loss.png)",
    })
    print(json.dumps({"metrics": metrics, "eval": table}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    cli_main(main)()
