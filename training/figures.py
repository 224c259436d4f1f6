"""Figures for docs/training.md: the trained default models' curves, tokens and answers, and two
diagrams (LoRA as W + BA, the whole pipeline).

    python -m training.figures [--base models/tiny-base] [--chat models/tiny-chat] \
        [--out docs/figures] [--diagrams]

Writes training_curves.png, training_tokens.png and training_answers.png from the models that
`python -m training.pipeline` builds, and training_lora.png and training_pipeline.png (drawn,
no model needed; `--diagrams` writes only these two).
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.helpers import ArgumentParser, UsageError, atomic_path, cli_main

PROG = "python -m training.figures"
# Asked of both models in training_answers.png: held-out questions of three tasks.
QUESTIONS = ["What is 12 + 34?", "What is 87 - 44?", "Define gradient.", "Define tensor."]
SENTENCES = ["What is 12 + 34?", "The tokenizer splits text into tokens."]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _plt().close(fig)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- from the models


def curves_figure(base: dict, chat: dict, evals: dict, path: Path) -> None:
    """Pretraining loss, fine-tuning loss, and held-out exact match of both models per task."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=100,
                             gridspec_kw={"width_ratios": [1, 1, 1.25]})
    for ax, metrics, title in ((axes[0], base, "1. pretraining: next token of raw text"),
                               (axes[1], chat, "2. LoRA fine-tuning: the assistant's tokens")):
        steps, losses = zip(*metrics["history"])
        ax.plot(steps, losses, lw=1)
        ax.set(xlabel="step", ylabel="training loss (cross-entropy)", title=title,
               xlim=(0, steps[-1]))
        ax.annotate(f"{losses[-1]:.2f} at step {steps[-1]:,}", (steps[-1], losses[-1]),
                    xytext=(-10, 25), textcoords="offset points", ha="right",
                    arrowprops={"arrowstyle": "->", "lw": 0.8})
        ax.grid(alpha=0.3)
    ax = axes[2]
    tasks = list(evals["fine_tuned"]["tasks"])
    width = 0.38
    for offset, which, color in ((-width / 2, "base", "tab:gray"),
                                 (width / 2, "fine_tuned", "tab:blue")):
        values = [100 * evals[which]["tasks"][t]["accuracy"] for t in tasks]
        x = [i + offset for i in range(len(tasks))]
        ax.bar(x, values, width=width, color=color, label=which.replace("_", "-"))
        ax.scatter(x, [0] * len(x), marker="_", s=200, color=color, zorder=3)  # 0% shows too
        for xi, v in zip(x, values):
            ax.text(xi, v + 1.5, f"{v:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylim=(0, 118), ylabel="exact match on held-out questions (%)",
           title="3. evaluation: base vs fine-tuned")
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def tokens_figure(tokenizer_dir: Path, path: Path) -> None:
    """Each sentence as the tokenizer cuts it: one box per token, its id under it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    plt = _plt()
    fig, axes = plt.subplots(len(SENTENCES), 1, figsize=(12, 1.35 * len(SENTENCES) + 0.4),
                             dpi=100)
    colors = ["#cfe2f3", "#fde2c8", "#d9ead3", "#ead1dc"]
    for ax, sentence in zip(axes, SENTENCES):
        ids = tok(sentence, add_special_tokens=False)["input_ids"]
        pieces = [tok.decode([i]) for i in ids]
        x = 0.0
        for k, (piece, token_id) in enumerate(zip(pieces, ids)):
            shown = piece.replace(" ", "␣")
            w = 0.35 + 0.16 * len(shown)
            ax.add_patch(plt.Rectangle((x, 0.35), w, 0.55, color=colors[k % len(colors)],
                                       ec="black", lw=0.6))
            ax.text(x + w / 2, 0.62, shown, ha="center", va="center", family="monospace",
                    fontsize=11)
            ax.text(x + w / 2, 0.12, str(token_id), ha="center", va="center", fontsize=8,
                    color="dimgray")
            x += w + 0.08
        ax.set_xlim(-0.1, max(x, 14))
        ax.set_ylim(0, 1)
        ax.set_axis_off()
        ax.set_title(f'"{sentence}": {len(sentence)} characters, {len(ids)} tokens',
                     fontsize=10, loc="left")
    fig.suptitle(f"the default tokenizer ({tokenizer_dir.name}, byte-level BPE, "
                 f"{len(tok)} tokens): box = token (␣ = space), number = token id; "
                 "digits are always one token each", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def answers_figure(base_dir: Path, chat_dir: Path, path: Path) -> None:
    """The same held-out questions answered (greedy) by the base and the fine-tuned model."""
    import textwrap

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training import tasks
    from training.generate import answer

    held = {ex.question for ex in tasks.held_out_examples()}
    rows = []
    for folder in (base_dir, chat_dir):
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        rows.append([r[0] for r in answer(model, tok, QUESTIONS, max_new_tokens=24)])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.75 * len(QUESTIONS)), dpi=100)
    ax.set_axis_off()
    cells = []
    for q, base_reply, chat_reply in zip(QUESTIONS, *rows):
        def show(reply):
            text = reply.text.replace("\n", "⏎")
            text = text if reply.finished else text + " … (no end of turn)"
            return "\n".join(textwrap.wrap(text, 48)) or "(empty)"
        mark = " (held out)" if q in held else ""
        cells.append([q + mark, show(base_reply), show(chat_reply)])
    table = ax.table(cellText=cells, colLabels=["question", f"base model ({base_dir.name})",
                                                f"fine-tuned ({chat_dir.name})"],
                     colWidths=[0.22, 0.41, 0.37], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 3.0)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eeeeee")
    ax.set_title("the same questions in the chat format, greedy, at most 24 new tokens",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------- diagrams


def lora_figure(path: Path, d: int = 128, r: int = 32) -> None:
    """W + BA for the default model's 128 -> 128 query projection at rank 32."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
    s = 2.4 / d  # drawing units per row/column

    def matrix(x, y, rows, cols, color, label, sub):
        ax.add_patch(plt.Rectangle((x, y), cols * s, rows * s, color=color, ec="black", lw=1))
        ax.text(x + cols * s / 2, y + rows * s / 2, label, ha="center", va="center",
                fontsize=15, weight="bold")
        ax.text(x + cols * s / 2, y - 0.12, sub, ha="center", va="top", fontsize=9)

    y0 = 0.6
    matrix(0.0, y0, d, d, "#d9d9d9", "W", f"frozen\n{d}×{d} = {d * d:,} weights")
    ax.text(2.75, y0 + 1.2, "+", fontsize=22, ha="center", va="center")
    matrix(3.1, y0, d, r, "#f4b183", "B", f"trained\n{d}×{r} = {d * r:,}")
    ax.text(3.1 + r * s + 0.25, y0 + 1.2, "·", fontsize=26, ha="center", va="center")
    matrix(3.1 + r * s + 0.5, y0 + (d - r) * s, r, d, "#9dc3e6", "A", "")
    ax.text(3.1 + r * s + 0.5 + d * s / 2, y0 + (d - r) * s - 0.12,
            f"trained\n{r}×{d} = {r * d:,}", ha="center", va="top", fontsize=9)
    ax.text(7.0, y0 + 1.2, "=", fontsize=22, ha="center", va="center")
    matrix(7.35, y0, d, d, "#c5e0b4", "W'", "what the exported model uses:\nW + (α/r)·BA, "
           "merged once")
    ax.text(5.0, 3.55, f"LoRA on one projection of the default model: {2 * d * r:,} trained "
            f"weights instead of {d * d:,}; W gets no gradient and no optimizer state",
            ha="center", fontsize=10)
    ax.set_xlim(-0.2, 10.0)
    ax.set_ylim(-0.6, 3.8)
    ax.set_aspect("equal")
    ax.set_axis_off()
    fig.tight_layout()
    _save(fig, path)


PIPELINE = [
    ("corpus + tokenizer", "pydoc text + task facts;\nbyte-level BPE, 1024 tokens",
     "training/corpus.py\ntraining/tokenizer.py"),
    ("1. pretrain", "next token of raw text\n→ models/tiny-base", "python -m training.pretrain"),
    ("2. fine-tune (LoRA)", "answers in the chat format\n→ models/tiny-chat",
     "python -m training.finetune"),
    ("3. RL (optional)", "GRPO / DPO on checkable\nanswers (a recipe's rl stage)",
     "python -m training.rl"),
    ("export", "ONNX with KV cache;\nGGUF f16 / q8_0 + Modelfile",
     "python scripts/export_onnx.py\npython scripts/export_gguf.py"),
    ("evaluate", "held-out questions in\ntorch, onnxruntime,\nllama.cpp",
     "python -m training.evaluate"),
    ("serve", "chat page + OpenAI API;\nOllama, container",
     "python -m serving.app\npython -m serving.api"),
]


def pipeline_figure(path: Path) -> None:
    """The stages `python -m training.pipeline --serve` runs, left to right, with commands."""
    plt = _plt()
    n = len(PIPELINE)
    fig, ax = plt.subplots(figsize=(16, 3.4), dpi=100)
    w, gap = 2.0, 0.45
    colors = ["#e7e6e6", "#dae3f3", "#dae3f3", "#dae3f3", "#fbe5d6", "#e2f0d9", "#fff2cc"]
    for i, (title, what, command) in enumerate(PIPELINE):
        x = i * (w + gap)
        ax.add_patch(plt.Rectangle((x, 0.9), w, 1.6, color=colors[i], ec="black", lw=1,
                                   ls="--" if "optional" in title else "-"))
        ax.text(x + w / 2, 2.25, title, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(x + w / 2, 1.55, what, ha="center", va="center", fontsize=8.5)
        ax.text(x + w / 2, 0.75, command, ha="center", va="top", fontsize=7.5,
                family="monospace", color="#333333")
        if i < n - 1:
            ax.annotate("", (x + w + gap - 0.03, 1.7), (x + w + 0.03, 1.7),
                        arrowprops={"arrowstyle": "-|>", "lw": 1.2})
    ax.text(n * (w + gap) / 2 - gap / 2, 2.85,
            "python -m training.pipeline --serve: every stage, reusing finished ones "
            "(models/<name>/recipe.yaml says which)", ha="center", fontsize=11)
    ax.set_xlim(-0.1, n * (w + gap))
    ax.set_ylim(-0.05, 3.1)
    ax.set_axis_off()
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, default=Path("models/tiny-base"))
    p.add_argument("--chat", type=Path, default=Path("models/tiny-chat"))
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    p.add_argument("--diagrams", action="store_true",
                   help="only the two diagrams, which need no trained model")
    args = p.parse_args(argv)
    if not args.diagrams:
        for folder in (args.base, args.chat):
            if not (folder / "metrics.json").exists():
                raise UsageError(f"{folder}/metrics.json missing; run: python -m training.pipeline")
        if not (args.chat / "eval.json").exists():
            raise UsageError(f"{args.chat}/eval.json missing; "
                             f"run: python -m training.evaluate --model {args.chat}")
    lora_figure(args.out / "training_lora.png")
    pipeline_figure(args.out / "training_pipeline.png")
    if args.diagrams:
        return
    base = json.loads((args.base / "metrics.json").read_text())
    chat = json.loads((args.chat / "metrics.json").read_text())
    evals = json.loads((args.chat / "eval.json").read_text())
    curves_figure(base, chat, evals, args.out / "training_curves.png")
    tokens_figure(args.chat, args.out / "training_tokens.png")
    answers_figure(args.base, args.chat, args.out / "training_answers.png")


if __name__ == "__main__":
    cli_main(main)()
