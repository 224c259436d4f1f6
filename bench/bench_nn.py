"""scratch/nn side by side with PyTorch CPU: same shapes, same threads, one run.

    python bench/bench_nn.py [--threads 1] [--quick]

1. Step time of the 784-256-128-10 MLP at batch 256 (SGD with momentum).
2. Step time of the char-level GPT (train.GPT_CONFIG), both starting from the same weights and
   fed the same batches, and the validation loss each reaches after the same number of steps.
3. Test accuracy on scikit-learn's digits at the CLI's defaults: MLP and CNN over 5 seeds each.

Steps of the two frameworks are timed in alternating blocks so a load spike from another
process hits both; the numbers reported are medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratch.nn import functional as F  # noqa: E402
from scratch.nn import train  # noqa: E402
from scratch.nn.data import CharDataset, default_text  # noqa: E402
from scratch.nn.modules import GPT  # noqa: E402
from scratch.nn.optim import SGD, AdamW, clip_grad_norm, cosine_lr  # noqa: E402
from scratch.nn.tensor import Tensor, no_grad  # noqa: E402
from tests.scratch.torch_reference import TorchBlock  # noqa: E402


def alternate(step_a, step_b, blocks: int, per_block: int) -> tuple[float, float]:
    """Median seconds per step of two step functions, timed in interleaved blocks."""
    times_a, times_b = [], []
    for _ in range(blocks):
        for step, times in ((step_a, times_a), (step_b, times_b)):
            for _ in range(per_block):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
    return float(np.median(times_a)), float(np.median(times_b))


def bench_mlp(blocks: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((256, 784), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    model = train.mlp(784, rng)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)

    def scratch_step():
        loss = F.cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_model = tnn.Sequential(
        tnn.Linear(784, 256), tnn.ReLU(), tnn.Linear(256, 128), tnn.ReLU(), tnn.Linear(128, 10)
    )
    t_opt = torch.optim.SGD(t_model.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        loss = TF.cross_entropy(t_model(tx), ty)
        t_opt.zero_grad()
        loss.backward()
        t_opt.step()

    for _ in range(20):  # warm-up: allocator, BLAS buffers
        scratch_step()
        torch_step()
    ours, theirs = alternate(scratch_step, torch_step, blocks, 50)
    return {"scratch_ms": ours * 1e3, "torch_ms": theirs * 1e3, "ratio": ours / theirs}


class TorchGPT(tnn.Module):
    def __init__(self, n_vocab, block_size, dim, n_head, n_layer):
        super().__init__()
        self.tok_emb, self.pos_emb = tnn.Embedding(n_vocab, dim), tnn.Embedding(block_size, dim)
        self.blocks = tnn.ModuleList(TorchBlock(dim, n_head) for _ in range(n_layer))
        self.ln_f, self.head = tnn.LayerNorm(dim), tnn.Linear(dim, n_vocab, bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def torch_state_for(model: GPT) -> dict:
    """scratch GPT parameter names -> TorchGPT's (blocks.0.attn.qkv -> blocks.0.qkv)."""
    return {
        name.replace(".attn.", "."): torch.from_numpy(array.copy())
        for name, array in model.state_dict().items()
    }


def adamw_torch(model, lr):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def bench_gpt(steps: int, blocks: int) -> dict:
    cfg, lr = train.GPT_CONFIG, 3e-3
    data = CharDataset(default_text())
    model = GPT(data.vocab_size, cfg["block_size"], cfg["dim"], cfg["n_head"], cfg["n_layer"],
                rng=np.random.default_rng(0))  # fmt: skip
    t_model = TorchGPT(
        data.vocab_size, cfg["block_size"], cfg["dim"], cfg["n_head"], cfg["n_layer"]
    )
    t_model.load_state_dict(torch_state_for(model))
    opt = AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    t_opt = adamw_torch(t_model, lr)
    batch_rng = np.random.default_rng(1)
    batches = [
        data.batch("train", cfg["batch_size"], cfg["block_size"], batch_rng) for _ in range(steps)
    ]
    counters = {"ours": 0, "theirs": 0}

    def scratch_step():
        i = counters["ours"]
        opt.lr = cosine_lr(i, steps, lr, warmup=steps // 10)
        x, y = batches[i % steps]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        counters["ours"] += 1

    def torch_step():
        i = counters["theirs"]
        for group in t_opt.param_groups:
            group["lr"] = cosine_lr(i, steps, lr, warmup=steps // 10)
        x, y = (torch.from_numpy(a) for a in batches[i % steps])
        loss = TF.cross_entropy(t_model(x).flatten(0, 1), y.flatten())
        t_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t_model.parameters(), 1.0)
        t_opt.step()
        counters["theirs"] += 1

    ours, theirs = alternate(scratch_step, torch_step, blocks, steps // blocks)
    val_rng = np.random.default_rng(1234)
    val = [data.batch("val", 64, cfg["block_size"], val_rng) for _ in range(16)]
    model.eval()
    with no_grad():
        val_ours = float(np.mean([F.cross_entropy(model(x), y).item() for x, y in val]))
    with torch.no_grad():
        val_theirs = float(np.mean([
            TF.cross_entropy(
                t_model(torch.from_numpy(x)).flatten(0, 1), torch.from_numpy(y).flatten()
            ).item()
            for x, y in val
        ]))  # fmt: skip
    return {
        "steps": steps, "scratch_ms": ours * 1e3, "torch_ms": theirs * 1e3, "ratio": ours / theirs,
        "val_loss_scratch": val_ours, "val_loss_torch": val_theirs,
        "val_loss_rel_diff": abs(val_ours - val_theirs) / val_theirs,
    }  # fmt: skip


def bench_digits(mlp_seeds: int, cnn_seeds: int) -> dict:
    # The CLI's defaults (digits-mlp: 30 epochs, 30% of images shifted; digits-cnn: 20 epochs).
    mlp = [train.run_digits("mlp", seed=s) for s in range(mlp_seeds)]
    cnn = [train.run_digits("cnn", seed=s) for s in range(cnn_seeds)]
    return {
        "mlp_accuracies": [r["test_accuracy"] for r in mlp],
        "mlp_median": float(np.median([r["test_accuracy"] for r in mlp])),
        "mlp_seconds": [round(r["seconds"], 1) for r in mlp],
        "cnn_accuracies": [r["test_accuracy"] for r in cnn],
        "cnn_median": float(np.median([r["test_accuracy"] for r in cnn])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for both")
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds (smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"threads": args.threads, "numpy": np.__version__, "torch": torch.__version__}
    with threadpool_limits(args.threads):
        results["mlp_784_256_128_10_b256"] = bench_mlp(blocks=2 if args.quick else 10)
        print(json.dumps(results, indent=2), flush=True)
        results["char_gpt"] = bench_gpt(
            steps=40 if args.quick else 1000, blocks=4 if args.quick else 10
        )
        print(json.dumps(results["char_gpt"], indent=2), flush=True)
        results["digits"] = bench_digits(2 if args.quick else 5, 1 if args.quick else 5)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
