"""Training throughput and MFU on this machine, measured side by side in one run.

    python bench/bench_training.py [--threads 2] [--steps 30] [--full] [--lora smol-chat]

1. Peak float32 matmul rate through PyTorch (the MFU denominator).
2. Pretraining step throughput of the default tiny-base recipe: tokens/s and MFU, counting
   6·N FLOPs per token for the weights plus the attention score/value products.
3. With --full: the default pretrain + fine-tune + evaluation end to end, timed.
4. With --lora RECIPE (e.g. smol-chat): the LoRA fine-tune step of that recipe on its base
   (its batch size, turns per conversation, rank and adapted layers), tokens/s and MFU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def pretrain_throughput(steps: int) -> dict:
    from transformers import LlamaForCausalLM

    from training.pretrain import PretrainSettings, model_config
    from training.stage import read_recipe

    s = PretrainSettings(**read_recipe(ROOT / "models/tiny-base", "pretrain"))
    config = model_config(s, s.vocab_size, 0, 2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    x = torch.randint(0, s.vocab_size, (s.batch_size, s.seq_len))
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    times.sort()
    step = times[len(times) // 2]
    tokens = s.batch_size * s.seq_len
    n_params = sum(p.numel() for p in model.parameters())
    # forward+backward = 3x forward; attention QK^T and AV: 2 * 2 * seq * hidden per token per layer
    attn = 3 * 4 * s.seq_len * s.hidden_size * s.num_hidden_layers // 2  # causal: half
    flops_per_token = 6 * n_params + attn
    return {"parameters": n_params, "tokens_per_step": tokens, "median_step_s": round(step, 4),
            "tokens_per_s": round(tokens / step),
            "gflops": round(flops_per_token * tokens / step / 1e9, 1)}


def lora_throughput(recipe: str, steps: int) -> dict:
    """A fine-tune recipe's LoRA step on its own data, timed. FLOPs counted per token: forward
    2·N (the tied lm_head included); backward only from the lowest adapted layer up (gradients of
    the activations there and through lm_head: 2·N_upper); the adapters' own weights 6·N_lora;
    attention products forward everywhere and backward in the upper layers. Padding is counted
    as work done but not as tokens."""
    from training.chatdata import encode_rows, load_rows, pad_batch
    from training.finetune import FinetuneSettings, add_lora, load_base
    from training.stage import read_recipe

    s = FinetuneSettings(**read_recipe(ROOT / "models" / recipe, "finetune"))
    # ROOT / an absolute path is that path
    model, tok = load_base(str(ROOT / s.base), trust_remote_code=False)
    cfg = model.config
    rows = load_rows(s.dataset, s.split, taught=s.tasks, turns=s.turns, seed=s.seed,
                     limit=s.task_limit)
    enc = encode_rows(tok, rows, s.max_len)
    torch.manual_seed(s.seed)
    model = add_lora(model, s)
    n_total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    lm_head = cfg.vocab_size * d
    per_layer = (n_total - lm_head * (1 if cfg.tie_word_embeddings else 2)) / layers
    upper = layers - (min(s.lora_layers) if s.lora_layers else 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    rng = np.random.default_rng(0)
    times, flops, tokens = [], 0.0, 0
    for i in range(steps + 2):
        batch = pad_batch(enc, rng.choice(len(enc.input_ids), s.batch_size, replace=False),
                          tok.pad_token_id)
        width = batch["input_ids"].shape[1]
        t = time.perf_counter()
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # the first steps warm allocators up
            times.append(time.perf_counter() - t)
            per_token = (2 * (n_total - (0 if cfg.tie_word_embeddings else lm_head))
                         + 2 * (upper * per_layer + lm_head) + 6 * n_lora
                         + 2 * width * d * (layers + 2 * upper))
            flops += per_token * s.batch_size * width
            tokens += int(batch["attention_mask"].sum())
    seconds = sum(times)
    return {"recipe": recipe, "base": s.base, "parameters": n_total, "lora_parameters": n_lora,
            "adapted_layers": f"{layers - upper}-{layers - 1}", "batch_size": s.batch_size,
            "steps_timed": steps, "mean_step_s": round(seconds / steps, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "gflops": round(flops / seconds / 1e9, 1)}


def full_run() -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    for name in ("tiny-base", "tiny-chat"):
        (out / name).mkdir()
        recipe = (ROOT / "models" / name / "recipe.yaml").read_text()
        (out / name / "recipe.yaml").write_text(recipe)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training.pretrain", "--out", str(out / "tiny-base")],
                   cwd=ROOT, check=True)
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training.finetune", "--base", str(out / "tiny-base"),
                    "--out", str(out / "tiny-chat")], cwd=ROOT, check=True)
    t2 = time.perf_counter()
    evals = json.loads((out / "tiny-chat" / "eval.json").read_text())
    ft = json.loads((out / "tiny-chat" / "metrics.json").read_text())
    return {
        "pretrain_s": round(t1 - t0, 1),
        "finetune_and_eval_s": round(t2 - t1, 1),
        "finetune_train_s": ft["train_seconds"],
        "pretrain_plus_finetune_s": round(t2 - t0, 1),
        "accuracy": {which: {t: r["accuracy"] for t, r in rep["tasks"].items()}
                     for which, rep in evals.items()},
        "folder": str(out),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--full", action="store_true",
                   help="also time the whole default pretrain + fine-tune")
    p.add_argument("--lora", metavar="RECIPE",
                   help="also time the LoRA step of models/RECIPE (e.g. smol-chat)")
    p.add_argument("--lora-steps", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = peak_matmul_gflops()
    tp = pretrain_throughput(args.steps)
    report = {"threads": args.threads, "peak_matmul_gflops": round(peak, 1), "pretrain_step": tp,
              "mfu": round(tp["gflops"] / peak, 3)}
    print(f"peak fp32 matmul: {peak:.0f} GFLOP/s ({args.threads} threads)")
    print(f"pretrain step: {tp['tokens_per_s']} tokens/s, {tp['gflops']} GFLOP/s, "
          f"MFU {report['mfu']:.1%}")
    if args.lora:
        lora = lora_throughput(args.lora, args.lora_steps)
        report["lora"] = {**lora, "mfu": round(lora["gflops"] / peak, 3)}
        print(f"{args.lora} LoRA step: {lora['mean_step_s']} s, {lora['tokens_per_s']} tokens/s, "
              f"{lora['gflops']} GFLOP/s, MFU {report['lora']['mfu']:.1%}")
    if args.full:
        report["full"] = full_run()
        print(json.dumps(report["full"], indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
