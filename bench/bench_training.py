"""Training throughput and MFU on this machine, measured side by side in one run.

    python bench/bench_training.py [--threads 2] [--steps 30] [--full]

1. Peak float32 matmul rate through PyTorch (the MFU denominator).
2. Pretraining step throughput of the default tiny-base recipe: tokens/s and MFU, counting
   6·N FLOPs per token for the weights plus the attention score/value products.
3. With --full: the default pretrain + fine-tune + evaluation end to end, timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

    from training.pretrain import DEFAULTS, model_config
    from training.stage import read_recipe

    s = {**DEFAULTS, **read_recipe(ROOT / "models/tiny-base", "pretrain")}
    config = model_config(s, s["vocab_size"], 0, 2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    x = torch.randint(0, s["vocab_size"], (s["batch_size"], s["seq_len"]))
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
    tokens = s["batch_size"] * s["seq_len"]
    n_params = sum(p.numel() for p in model.parameters())
    # forward+backward = 3x forward; attention QK^T and AV: 2 * 2 * seq * hidden per token per layer
    attn = 3 * 4 * s["seq_len"] * s["hidden_size"] * s["num_hidden_layers"] // 2  # causal: half
    flops_per_token = 6 * n_params + attn
    return {"parameters": n_params, "tokens_per_step": tokens, "median_step_s": round(step, 4),
            "tokens_per_s": round(tokens / step),
            "gflops": round(flops_per_token * tokens / step / 1e9, 1)}


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
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = peak_matmul_gflops()
    tp = pretrain_throughput(args.steps)
    report = {"threads": args.threads, "peak_matmul_gflops": round(peak, 1), "pretrain_step": tp,
              "mfu": round(tp["gflops"] / peak, 3)}
    print(f"peak fp32 matmul: {peak:.0f} GFLOP/s ({args.threads} threads)")
    print(f"pretrain step: {tp['tokens_per_s']} tokens/s, {tp['gflops']} GFLOP/s, "
          f"MFU {report['mfu']:.1%}")
    if args.full:
        report["full"] = full_run()
        print(json.dumps(report["full"], indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
