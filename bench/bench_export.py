"""Every runtime on the same model, side by side in one run: decode tokens/s, time to first
token, peak memory; and the export file sizes.

    python bench/bench_export.py [--model models/tiny-chat] [--tokens 128] [--threads 1]

Needs the folder's exports (python -m training.pipeline makes them). Each runtime runs in a
process of its own (so its peak memory is its own): the same chat prompt, greedy, batch 1,
exactly --tokens new tokens (end-of-turn ignored), the same thread count, best of --repeats.
Time to first token is the prompt's forward pass and the first token; decode speed is the
tokens after the first over the time after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Explain attention briefly."}]
RUNTIMES = ("pytorch eager", "onnxruntime", "llama.cpp f16", "llama.cpp q8_0")


def token_times(step_iter) -> tuple[float, float]:
    """(seconds to the first token, seconds for the rest) of one generation."""
    start = time.perf_counter()
    first = None
    for _ in step_iter:
        if first is None:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start - first


def worker(model: Path, runtime: str, n: int, threads: int, repeats: int) -> dict:
    """Measure one runtime in this process (run by the parent, one process per runtime)."""
    os.environ["MLZERO_GGUF_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from serving.backend import Sampling

    if runtime == "pytorch eager":
        from serving.torch_backend import TorchBackend

        backend = TorchBackend(model)
        run = lambda ids: backend._token_ids(ids, Sampling(n))  # noqa: E731
    elif runtime == "onnxruntime":
        from serving.onnx_backend import OnnxBackend

        backend = OnnxBackend(model, threads=threads)
        run = lambda ids: backend._token_ids(ids, Sampling(n))  # noqa: E731
    else:
        from serving.gguf_backend import GgufBackend

        kind = runtime.split()[-1]
        backend = GgufBackend(model, gguf_file=model / "gguf" / f"{model.name}-{kind}.gguf",
                              n_threads=threads)

        def run(ids):  # llama.cpp's stream, one chunk per token, end-of-turn ignored
            from serving.backend import in_thread

            req = backend._request(ids, Sampling(n), stream=True, ignore_eos=True,
                                   cache_prompt=False)
            return in_thread(lambda emit: backend.server.handle_completions(
                req, lambda chunk: not emit(chunk)))

    ids = backend.prompt_ids(PROMPT)
    timings = [token_times(run(ids)) for _ in range(repeats + 1)][1:]  # the first warms up
    ttft = min(t[0] for t in timings)
    decode = min(t[1] for t in timings)
    return {"ttft_ms": round(ttft * 1000, 1), "decode_tokens_per_s": round((n - 1) / decode, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models/tiny-chat")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker, args.tokens, args.threads,
                                args.repeats)))
        return
    results = {}
    for runtime in RUNTIMES:
        proc = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--worker",
                               runtime, "--tokens", str(args.tokens), "--threads",
                               str(args.threads), "--repeats", str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{runtime}: failed\n{proc.stderr[-2000:]}")
            continue
        results[runtime] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results["pytorch eager"]["decode_tokens_per_s"]
    print(f"{args.model.name}: batch 1, greedy, {args.tokens} new tokens, {args.threads} "
          f"thread(s), best of {args.repeats}, load {os.getloadavg()[0]:.2f}")
    for runtime, r in results.items():
        r["vs_pytorch"] = round(r["decode_tokens_per_s"] / base, 2)
        print(f"  {runtime:15s} decode {r['decode_tokens_per_s']:8.1f} tokens/s "
              f"({r['vs_pytorch']:4.1f}x)  first token {r['ttft_ms']:7.1f} ms  "
              f"peak memory {r['peak_rss_mb']} MB")
    sizes = {"safetensors f32": (args.model / "model.safetensors").stat().st_size,
             "onnx f32": (args.model / "onnx" / "model.onnx").stat().st_size}
    for kind in ("f16", "q8_0"):
        gguf = args.model / "gguf" / f"{args.model.name}-{kind}.gguf"
        sizes[f"gguf {kind}"] = gguf.stat().st_size
    print("file sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items())
          + f"; q8_0 / f16 = {sizes['gguf q8_0'] / sizes['gguf f16']:.3f}")
    report = {"model": str(args.model), "tokens": args.tokens, "threads": args.threads,
              "runtimes": results, "bytes": sizes}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
