"""Our framework's Llama beside the real runtimes, measured side by side in one run.

    python bench/bench_scratch_llama.py [--model models/scratch-chat] [--new-tokens 40]
                                        [--repeats 7]

The folder is what `python -m scratch.nn --task llama-chat --out models/scratch-chat` writes.
1. Decoding, batch 1, one chat prompt + `--new-tokens` greedy tokens with the special tokens
   banned (so none stops early), one thread each, the runtimes timed in alternation, median:
   scratch/nn's numpy loop with its own KV cache, PyTorch (transformers' LlamaForCausalLM and its
   KV cache, a plain greedy loop), llama.cpp (the folder exported by scripts/export_gguf.py
   --outtype f32 into a temporary folder). All three must produce the same token ids.
2. A training step on the same batches of 128 conversations (loss on the reply only, AdamW,
   clipping at 1.0), ours vs PyTorch, one thread each, alternating, median; the first step's
   losses printed side by side (they agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = "What is 12 + 34?"


def ours_decode(gen, prompt: list[int], n: int, banned: list[int]) -> list[int]:
    return gen.greedy([prompt], n, stop_id=None, banned=banned)[0]


def torch_decode(model, prompt: list[int], n: int, banned: list[int]) -> list[int]:
    import torch

    out, past = [], None
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            res = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1]
            logits[banned] = -float("inf")
            tok = int(logits.argmax())
            out.append(tok)
            ids = torch.tensor([[tok]])
    return out


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def decode_bench(folder: Path, n: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from scratch.nn import hf
    from scratch.nn.llama import Generator
    from serving.gguf_backend import GgufBackend

    model, tok = hf.load_folder(folder)
    gen = Generator(model)
    prompt = tok.chat_prompt(QUESTION)
    banned = sorted(tok.special_ids.values())
    pt = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scratch-llama-"))
    subprocess.run([sys.executable, "scripts/export_gguf.py", str(folder), "--outtype", "f32",
                    "--out-dir", str(tmp)], cwd=ROOT, check=True, capture_output=True)
    gguf = GgufBackend(folder, next(tmp.glob("*.gguf")), n_threads=1)

    runtimes = {
        "scratch/nn (numpy, own KV cache)": lambda: ours_decode(gen, prompt, n, banned),
        "PyTorch (transformers, eager)": lambda: torch_decode(pt, prompt, n, banned),
        "llama.cpp (GGUF f32)": lambda: [e["id"] for e in gguf.greedy_tokens(prompt, n, banned)],
    }
    times: dict[str, list[float]] = {k: [] for k in runtimes}
    tokens: dict[str, list[int]] = {}
    for name, fn in runtimes.items():  # warm-up
        tokens[name] = list(fn())
    for _ in range(repeats):
        for name, fn in runtimes.items():
            seconds, _ = timed(fn)
            times[name].append(seconds)
    same = len({tuple(t) for t in tokens.values()}) == 1
    rows = {name: {"ms": round(1000 * statistics.median(t), 1),
                   "tokens_per_s": round(n / statistics.median(t), 1)}
            for name, t in times.items()}
    return {"prompt_tokens": len(prompt), "new_tokens": n, "same_token_ids": same,
            "reply": tok.decode(tokens["scratch/nn (numpy, own KV cache)"]), "runtimes": rows}


def train_bench(folder: Path, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from scratch.nn import chatdata, hf
    from scratch.nn import functional as F
    from scratch.nn.llama_chat import DEFAULTS
    from scratch.nn.optim import AdamW, clip_grad_norm

    model, tok = hf.load_folder(folder)
    params = model.parameters()
    opt = AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    pt = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
    pt_opt = torch.optim.AdamW(pt.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    train_set, _ = chatdata.split()
    data = chatdata.ChatBatches(tok, train_set)
    rng = np.random.default_rng(0)

    def ours(ids, rows, targets) -> float:
        loss = F.cross_entropy(model(ids, rows), targets)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        return loss.item()

    def theirs(ids, rows, targets) -> float:
        hidden = pt.model(input_ids=torch.from_numpy(ids)).last_hidden_state
        logits = pt.lm_head(hidden.reshape(-1, hidden.shape[-1])[torch.from_numpy(rows)])
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets))
        pt_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pt.parameters(), 1.0)
        pt_opt.step()
        return loss.item()

    times: dict[str, list[float]] = {"scratch/nn": [], "PyTorch": []}
    first: dict[str, float] = {}
    for step in range(repeats + 1):
        batch = data.batch(rng.choice(len(data), DEFAULTS["batch_size"], replace=False))
        for name, fn in (("scratch/nn", ours), ("PyTorch", theirs)):
            seconds, loss = timed(lambda fn=fn, batch=batch: fn(*batch))
            if step == 0:
                first[name] = loss  # the first step also warms up; not timed
            else:
                times[name].append(seconds)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    return {"batch_size": DEFAULTS["batch_size"], "first_step_loss": first, "median_ms": ms,
            "ours_over_pytorch": round(ms["scratch/nn"] / ms["PyTorch"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models/scratch-chat")
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"error: no model in {args.model}; run: python -m scratch.nn --task llama-chat "
                 f"--out {args.model}")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        report = {"decode": decode_bench(args.model, args.new_tokens, args.repeats),
                  "train_step": train_bench(args.model, args.repeats)}
    d = report["decode"]
    print(f"decode, prompt {d['prompt_tokens']} + {d['new_tokens']} tokens, same ids in all: "
          f"{d['same_token_ids']}")
    for name, r in d["runtimes"].items():
        print(f"  {name:34s} {r['ms']:8.1f} ms  {r['tokens_per_s']:7.1f} tokens/s")
    t = report["train_step"]
    print(f"training step, batch {t['batch_size']}: scratch/nn {t['median_ms']['scratch/nn']} ms, "
          f"PyTorch {t['median_ms']['PyTorch']} ms ({t['ours_over_pytorch']}x); first-step "
          f"loss {t['first_step_loss']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
