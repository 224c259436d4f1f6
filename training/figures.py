"""Figures for docs/training.md from the trained default models' metrics.

    python -m training.figures [--base models/tiny-base] [--chat models/tiny-chat] \
        [--out docs/figures]
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.helpers import ArgumentParser, UsageError, atomic_path, cli_main


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m training.figures", description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, default=Path("models/tiny-base"))
    p.add_argument("--chat", type=Path, default=Path("models/tiny-chat"))
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = p.parse_args(argv)
    for folder in (args.base, args.chat):
        if not (folder / "metrics.json").exists():
            raise UsageError(f"{folder}/metrics.json missing; run: python -m training.pipeline")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = json.loads((args.base / "metrics.json").read_text())
    chat = json.loads((args.chat / "metrics.json").read_text())
    eval_path = args.chat / "eval.json"
    evals = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    fig, axes = plt.subplots(1, 3 if evals else 2, figsize=(13 if evals else 9, 3.5), dpi=100)
    for ax, metrics, title in ((axes[0], base, "1. pretraining (next token, raw text)"),
                               (axes[1], chat, "2. LoRA fine-tuning (assistant tokens)")):
        steps, losses = zip(*metrics["history"])
        ax.plot(steps, losses)
        ax.set(xlabel="step", ylabel="loss", title=title)
        ax.grid(alpha=0.3)
    if evals:
        tasks = list(evals["fine_tuned"]["tasks"])
        x = range(len(tasks))
        for offset, which in ((-0.2, "base"), (0.2, "fine_tuned")):
            if which in evals:
                axes[2].bar([i + offset for i in x],
                            [evals[which]["tasks"][t]["accuracy"] for t in tasks],
                            width=0.4, label=which.replace("_", "-"))
        axes[2].set_xticks(list(x), tasks)
        axes[2].set(ylim=(0, 1), ylabel="exact match (held out)", title="3. evaluation")
        axes[2].legend(loc="center")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "training_curves.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    print(f"wrote {target}")


if __name__ == "__main__":
    cli_main(main)()
