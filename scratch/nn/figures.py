"""python -m scratch.nn.figures [--out DIR] — the figures of docs/nn.md (default docs/figures/).

Trains the three runs briefly (about a minute on 2 cores) and writes:
  nn_loss_curves.png   training loss per step: digits MLP, digits CNN, char-GPT
  nn_conv_filters.png  the CNN's 16 learned first-layer 3x3 filters
  nn_attention.png     where each head of the GPT's first block looks, on a line of text
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "figures"
    )
    parser.add_argument("--gpt-epochs", type=helpers.int_range(1), default=2)
    args = parser.parse_args(argv)
    threadpool_limits(1)

    mlp = train.run_digits("mlp", seed=0)  # the CLI's default epochs and augmentation
    cnn = train.run_digits("cnn", seed=0)
    text = default_text()
    gpt = train.run_char_gpt(args.gpt_epochs, seed=0, text=text)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, run in zip(axes, (mlp, cnn, gpt), strict=True):
        ax.plot(run["history"], alpha=0.3, lw=0.6, color="tab:blue")
        ax.plot(
            np.arange(19, 19 + len(smooth(run["history"]))),
            smooth(run["history"]),
            color="tab:blue",
        )
        note = (
            f"test acc {run['test_accuracy']:.3f}"
            if run["test_accuracy"]
            else f"val loss {run['val_loss']:.2f}"
        )
        ax.set(title=f"{run['task']} ({note})", xlabel="step", yscale="log")
    axes[0].set_ylabel("cross-entropy loss")
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
    line = "def update(self, other): return self.items"[: gpt["model"].block_size]
    maps = attention_maps(gpt["model"], data.encode(line)[None])
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4))
    for head, (ax, m) in enumerate(zip(axes, maps, strict=True)):
        ax.imshow(m, cmap="viridis")
        ax.set_xticks(range(len(line)), list(line), fontsize=5, family="monospace")
        ax.set_yticks(range(len(line)), list(line), fontsize=5, family="monospace")
        ax.set_title(f"head {head}", fontsize=9)
    fig.suptitle("char-GPT block 1: row = query position, column = position attended to")
    fig.tight_layout()
    helpers.save_figure(fig, args.out / "nn_attention.png", dpi=80)
    plt.close(fig)
    print("\n".join(str(p) for p in sorted(args.out.glob("nn_*.png"))))
    print(f"sample after {args.gpt_epochs * train.STEPS_PER_EPOCH} steps:\n{gpt['sample']}")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
