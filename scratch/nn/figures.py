"""python -m scratch.nn.figures [--out DIR] — the figures of docs/nn.md (default docs/figures/).

Trains the three runs as the CLI does (a few minutes on one core) and writes:
  nn_loss_curves.png   training loss per step: digits MLP, digits CNN, char-GPT (1,000 steps,
                       with its validation loss)
  nn_conv_filters.png  the CNN's 16 learned first-layer 3x3 filters
  nn_attention.png     where each head of the GPT's first block looks, on a line of text
With --llama-json OUT (the JSON of `python -m scratch.nn --task llama-chat --eval-every N
--json OUT`), trains nothing and writes only:
  nn_llama_chat_curve.png  the Llama's held-out accuracy against training steps
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from scratch import helpers  # noqa: E402
from scratch.nn import train  # noqa: E402
from scratch.nn.data import CharDataset, default_text  # noqa: E402
from scratch.nn.modules import GPT  # noqa: E402
from scratch.nn.tensor import no_grad  # noqa: E402


def smooth(values, window: int = 20) -> np.ndarray:
    values = np.asarray(values)
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def attention_maps(model: GPT, idx: np.ndarray) -> np.ndarray:
    """Attention probabilities (heads, T, T) of the first block for one sequence."""
    block = model.blocks[0]
    with no_grad():
        x = model.tok_emb(idx) + model.pos_emb(np.arange(idx.shape[1]))
        b, t, dim = x.shape
        heads = block.attn.n_head
        qkv = block.attn.qkv(block.ln1(x)).data.reshape(b, t, 3, heads, dim // heads)
        q, k = qkv[:, :, 0].transpose(0, 2, 1, 3), qkv[:, :, 1].transpose(0, 2, 1, 3)
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim // heads)
        scores[..., np.triu(np.ones((t, t), bool), 1)] = -np.inf
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        return (probs / probs.sum(-1, keepdims=True))[0]


PROG = "python -m scratch.nn.figures"
ATTENTION_LINE = "def items(self):"  # short enough that every character's tick is readable


def llama_curve(report_path: Path, out: Path) -> int:
    """The llama-chat run's held-out sample accuracy against steps (and training seconds)."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        curve = report["curve"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise helpers.UsageError(f"{report_path}: not a llama-chat JSON with a curve ({err}); "
                                 f"make one with --eval-every") from None
    if not curve:
        raise helpers.UsageError(f"{report_path} has an empty curve: train with --eval-every N")
    steps = [p["step"] for p in curve]
    acc = [100 * p["held_out_sample_accuracy"] for p in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, acc, "o-", color="tab:blue")
    for point, s, a in zip(curve, steps, acc, strict=True):
        ax.annotate(f"{a:.0f}%\n{point['seconds']:.0f} s", (s, a), xytext=(0, 8),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.axhline(90, color="tab:gray", ls="--", lw=0.8, label="target 90%")
    ax.set(xlabel="training step (batch 128)", ylabel="held-out exact match (%)",
           ylim=(-5, 118), title=f"scratch/nn Llama, {report['parameters']:,} parameters: "
           f"{100 * report['test_accuracy']:.1f}% of {report['held_out_questions']:,} held-out")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    helpers.save_figure(fig, out, dpi=80)
    plt.close(fig)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "figures"
    )
    parser.add_argument("--gpt-epochs", type=helpers.int_range(1), default=4,
                        help=f"char-GPT epochs of {train.STEPS_PER_EPOCH} steps (the CLI's 4)")
    parser.add_argument("--llama-json", type=Path,
                        help="only draw the llama-chat learning curve from this JSON")
    args = parser.parse_args(argv)
    if args.llama_json is not None:
        return llama_curve(args.llama_json, args.out / "nn_llama_chat_curve.png")
    threadpool_limits(1)

    mlp = train.run_digits("mlp", seed=0)  # the CLI's default epochs and augmentation
    cnn = train.run_digits("cnn", seed=0)
    text = default_text()
    gpt = train.run_char_gpt(args.gpt_epochs, seed=0, text=text, val_every=50)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, run in zip(axes, (mlp, cnn, gpt), strict=True):
        ax.plot(run["history"], alpha=0.3, lw=0.6, color="tab:blue")
        smoothed = smooth(run["history"])
        x = np.arange(19, 19 + len(smoothed))
        ax.plot(x, smoothed, color="tab:blue", label="training (mean of 20 steps)")
        ax.annotate(f"{smoothed[-1]:.3f}", (x[-1], smoothed[-1]), xytext=(-4, 12),
                    textcoords="offset points", ha="right", color="tab:blue")
        if run.get("val_history"):
            steps, values = zip(*run["val_history"], strict=True)
            ax.plot(steps, values, "o-", ms=3, color="tab:orange",
                    label="validation (text never trained on)")
            ax.annotate(f"{values[-1]:.3f}", (steps[-1], values[-1]), xytext=(-4, 8),
                        textcoords="offset points", ha="right", color="tab:orange")
        if run["test_accuracy"]:
            note = (f"test accuracy {100 * run['test_accuracy']:.1f}% "
                    f"({round(run['test_accuracy'] * 359)}/359)")
        else:
            note = f"{len(run['history']):,} steps, validation loss {run['val_loss']:.3f}"
        ax.set(title=f"{run['task']}\n{note}", xlabel="step", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("cross-entropy loss (log scale)")
    fig.tight_layout()
    helpers.save_figure(fig, args.out / "nn_loss_curves.png", dpi=80)
    plt.close(fig)

    filters = cnn["model"].layers[0].weight.data[:, 0]  # (16, 3, 3)
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.3))
    for ax, f in zip(axes.flat, filters, strict=True):
        limit = np.abs(f).max()
        ax.imshow(f, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_axis_off()
    fig.suptitle("digits CNN: learned first-layer 3x3 filters (red +, blue -)")
    helpers.save_figure(fig, args.out / "nn_conv_filters.png", dpi=80)
    plt.close(fig)

    data = CharDataset(text)
    line = ATTENTION_LINE[: gpt["model"].block_size]
    maps = attention_maps(gpt["model"], data.encode(line)[None])
    shown = [c if c != " " else "␣" for c in line]
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 5.0))
    for head, (ax, m) in enumerate(zip(axes, maps, strict=True)):
        image = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(line)), shown, fontsize=9, family="monospace")
        ax.set_yticks(range(len(line)), shown, fontsize=9, family="monospace")
        ax.tick_params(length=0)
        ax.set_xlabel("attended-to character (key)")
        focus = m[np.arange(len(line)), np.arange(len(line))].mean()
        prev = np.mean([m[i, i - 1] for i in range(1, len(line))])
        ax.set_title(f"head {head}: mean weight on itself {focus:.2f}, on the previous "
                     f"character {prev:.2f}", fontsize=9)
    axes[0].set_ylabel("query character (each row sums to 1)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle("char-GPT block 1 on a line of Python: row = the character that looks, "
                 "column = where it looks (only at itself and earlier characters)")
    helpers.save_figure(fig, args.out / "nn_attention.png", dpi=80)
    plt.close(fig)
    print("\n".join(str(p) for p in sorted(args.out.glob("nn_*.png"))))
    print(f"sample after {args.gpt_epochs * train.STEPS_PER_EPOCH} steps:\n{gpt['sample']}")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
