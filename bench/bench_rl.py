"""Stage 3 side by side: GRPO, DPO and more supervised fine-tuning, from the same model with the
same compute, on the same held-out questions.

    python bench/bench_rl.py [--base models/tiny-sum3] [--task sum3] [--out /tmp/bench_rl]

Runs `python -m training.rl --method grpo` and `--method dpo` with the tiny-rl recipe's settings
(models/tiny-rl/recipe.yaml), then `python -m training.finetune` from the same base on the same
task's training questions (mixed with the sums and differences it already knows) for as long as
GRPO took, and prints one table: held-out accuracy (greedy) and pass@8 before and after, the
original add/sub accuracy after, seconds. Runs one at a time (2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} failed ({proc.returncode})")
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, default=ROOT / "models/tiny-sum3")
    p.add_argument("--recipe", type=Path, default=ROOT / "models/tiny-rl/recipe.yaml")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_rl"))
    p.add_argument("--json", type=Path, help="also write the table here")
    args = p.parse_args()
    from training import tasks
    from training.rl import RLSettings, measure

    rl = yaml.safe_load(args.recipe.read_text())["rl"]
    rl["base"] = str(args.base)
    rows = {}
    for method in ("grpo", "dpo"):
        out = args.out / f"rl-{method}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump({"rl": {**rl, "method": method}}))
        seconds = run(["-m", "training.rl", "--out", str(out)])
        report = json.loads((out / "rl.json").read_text())
        evals = json.loads((out / "eval.json").read_text())["rl"]["tasks"]
        rows[method.upper()] = {"seconds": round(seconds), **report["after"],
                                "before": report["before"],
                                "addition": evals["addition"]["accuracy"],
                                "subtraction": evals["subtraction"]["accuracy"]}

    # more SFT, for as long as GRPO took (its own step time measured by a short run first)
    s = RLSettings(**rl)
    probe = args.out / "sft-probe"
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir(parents=True)
    sft = {"base": str(args.base), "tasks": ["addition", "subtraction", s.task],
           "task_limit": {s.task: 20000}, "batch_size": 64, "lr": 0.002, "warmup": 10,
           "lora_r": s.lora_r, "lora_alpha": s.lora_alpha, "checkpoint_every": 0}
    (probe / "recipe.yaml").write_text(yaml.safe_dump({"finetune": {**sft, "steps": 20}}))
    run(["-m", "training.finetune", "--out", str(probe), "--no-eval"])
    per_step = json.loads((probe / "metrics.json").read_text())["train_seconds"] / 20
    steps = max(20, int(rows["GRPO"]["seconds"] / per_step))
    out = args.out / "more-sft"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump({"finetune": {**sft, "steps": steps}}))
    seconds = run(["-m", "training.finetune", "--out", str(out), "--no-eval"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    import random

    held = random.Random(s.seed).sample(tasks.TASKS[s.task]()[1], s.eval_n)
    after = measure(model, tok, held, s)
    from training.evaluate import evaluate

    ev = evaluate(out, "torch", 200)["tasks"]
    rows[f"more SFT ({steps} steps)"] = {"seconds": round(seconds), **after,
                                         "before": rows["GRPO"]["before"],
                                         "addition": ev["addition"]["accuracy"],
                                         "subtraction": ev["subtraction"]["accuracy"]}

    before = rows["GRPO"]["before"]
    print(f"{s.task} from {args.base.name}: before accuracy {before['accuracy']:.1%}, "
          f"pass@8 {before['pass_at_8']:.1%}")
    print(f"{'method':22s} {'seconds':>8s} {'accuracy':>9s} {'pass@8':>7s} {'add':>6s} {'sub':>6s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['seconds']:8d} {r['accuracy']:9.1%} {r['pass_at_8']:7.1%} "
              f"{r['addition']:6.1%} {r['subtraction']:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
