"""Decode speed at batch 1 in every runtime, and export file sizes, side by side in one run.

    python bench/bench_export.py [--model models/tiny-chat] [--tokens 128] [--threads 1]

Needs the folder's exports (python -m training.pipeline makes them). Every runtime decodes the
same prompt for exactly --tokens new tokens (end-of-turn ignored), greedy, same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Explain attention briefly."}]


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models/tiny-chat")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ["MLZERO_GGUF_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from serving.backend import Sampling
    from serving.gguf_backend import GgufBackend
    from serving.onnx_backend import OnnxBackend
    from serving.torch_backend import TorchBackend

    n = args.tokens
    results: dict[str, float] = {}
    tb = TorchBackend(args.model)
    ids = tb.prompt_ids(PROMPT)
    x = torch.tensor([ids])

    def torch_generate():
        with torch.inference_mode():
            out = tb.model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=tb.tokenizer.pad_token_id)
        assert out.shape[1] == len(ids) + n

    results["pytorch eager generate"] = n / best_of(torch_generate, args.repeats)

    ob = OnnxBackend(args.model, threads=args.threads)

    def onnx_decode():
        assert sum(1 for _ in ob._token_ids(ids, Sampling(n))) == n

    results["onnxruntime + KV cache"] = n / best_of(onnx_decode, args.repeats)

    sizes = {}
    for kind in ("f16", "q8_0"):
        f = args.model / "gguf" / f"{args.model.name}-{kind}.gguf"
        if not f.exists():
            print(f"skipping llama.cpp {kind}: {f} missing "
                  f"(python scripts/export_gguf.py {args.model} --outtype {kind})")
            continue
        sizes[kind] = f.stat().st_size
        gb = GgufBackend(args.model, gguf_file=f, n_threads=args.threads)
        req = gb._request(ids, n, 0.0, 0, ignore_eos=True, cache_prompt=False)

        def gguf_decode(gb=gb, req=req):
            res = gb._complete(req)
            assert res["timings"]["predicted_n"] == n, res["timings"]

        results[f"llama.cpp {kind}"] = n / best_of(gguf_decode, args.repeats)

    base = results["pytorch eager generate"]
    print(f"decode, batch 1, {n} new tokens, {args.threads} thread(s), best of {args.repeats}:")
    for name, tps in results.items():
        print(f"  {name:26s} {tps:9.0f} tokens/s  {tps / base:6.1f}x PyTorch")
    onnx_file = args.model / "onnx" / "model.onnx"
    sizes["onnx f32"] = onnx_file.stat().st_size
    sizes["safetensors f32"] = (args.model / "model.safetensors").stat().st_size
    print("file sizes:")
    for name, size in sizes.items():
        print(f"  {name:16s} {size / 1e6:7.2f} MB")
    if "f16" in sizes and "q8_0" in sizes:
        print(f"  q8_0 / f16 = {sizes['q8_0'] / sizes['f16']:.3f}")
    print(json.dumps({"tokens_per_s": {k: round(v) for k, v in results.items()},
                      "bytes": sizes, "threads": args.threads}))


if __name__ == "__main__":
    main()
