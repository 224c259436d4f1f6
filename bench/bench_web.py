"""The model in the page vs the same llama.cpp natively, side by side in one run: load time, time
to first token, decode tokens/s, and the site's size.

    python bench/bench_web.py [--model models/tiny-chat] [--outtype q8_0] [--tokens 128]

Builds the site (python -m serving.web) into a temporary folder, serves it with Python's static
file server and opens it in headless Chromium (Debian's, one WebAssembly thread: a plain static
server sends no cross-origin isolation headers, so wllama runs single-threaded). Natively, the
same GGUF file through llama.cpp (xllamacpp) on one thread, measured as bench/bench_export.py
does. Both: the same chat prompt, greedy, exactly --tokens new tokens (end of turn ignored),
best of --repeats after a warm-up. Time to first token is the prompt's forward pass and the
first token (in the page also the chat template and tokenization); decode speed is the tokens
after the first over the time after the first. Load: in the page from navigation to a loaded
model (site.json, the model file from the local server, checksum, WebAssembly start, llama.cpp
load), natively the backend's start (tokenizer and llama.cpp load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_export import PROMPT  # noqa: E402
from serving.web.browser import chromium, open_site, serve_folder  # noqa: E402


def in_browser(site: Path, n: int, repeats: int) -> dict:
    with serve_folder(site) as url, chromium() as browser:
        start = time.perf_counter()
        with open_site(browser, url, timeout_ms=600_000) as (page, blocked):
            load = time.perf_counter() - start
            if page.evaluate("window.mlzero.error"):
                raise SystemExit(f"the page could not load the model: "
                                 f"{page.evaluate('window.mlzero.error')}")
            runs = [page.evaluate("([m, n]) => window.mlzero.chat(m, {maxTokens: n, "
                                  "ignoreEos: true})", [PROMPT, n]) for _ in range(repeats + 1)]
            threads = page.evaluate("window.mlzero.timings.threads")
    runs = runs[1:]  # the first warms up
    assert all(r["tokens"] == n for r in runs), [r["tokens"] for r in runs]
    decode = min(r["seconds"] - r["firstTokenSeconds"] for r in runs)
    return {"load_s": round(load, 2), "ttft_ms": round(min(r["firstTokenSeconds"]
                                                           for r in runs) * 1000, 1),
            "decode_tokens_per_s": round((n - 1) / decode, 1), "threads": threads,
            "blocked_requests": len(blocked)}


def native(model: Path, outtype: str, n: int, repeats: int) -> dict:
    """llama.cpp natively, each measure in a process of its own (one llama.cpp server per
    process: a second one in the same process hangs): the backend's start, then
    bench_export's measurement of the same runtime."""
    def run(*args: str) -> dict:
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                              check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    load = run(__file__, "--model", str(model), "--outtype", outtype, "--native-load")
    speed = run(str(ROOT / "bench/bench_export.py"), "--model", str(model), "--worker",
                f"llama.cpp {outtype}", "--tokens", str(n), "--threads", "1",
                "--repeats", str(repeats))
    return {"load_s": load["load_s"], "ttft_ms": speed["ttft_ms"],
            "decode_tokens_per_s": speed["decode_tokens_per_s"], "threads": 1}


def native_load(model: Path, outtype: str) -> dict:
    from serving.gguf_backend import GgufBackend

    start = time.perf_counter()
    GgufBackend(model, gguf_file=model / "gguf" / f"{model.name}-{outtype}.gguf", n_threads=1)
    return {"load_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models/tiny-chat")
    p.add_argument("--outtype", default="q8_0", choices=("q8_0", "f16", "f32"))
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--native-load", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.native_load:
        print(json.dumps(native_load(args.model, args.outtype)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "serving.web", "--model", str(args.model),
                        "--out", str(site), "--outtype", args.outtype], check=True, cwd=ROOT)
        files = [f for f in site.rglob("*") if f.is_file()]
        size = {"site_mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
                "model_mb": round(sum(f.stat().st_size for f in files
                                      if f.suffix == ".gguf") / 1e6, 2)}
        print("measuring in the browser...", file=sys.stderr, flush=True)
        browser = in_browser(site, args.tokens, args.repeats)
    print("measuring llama.cpp natively...", file=sys.stderr, flush=True)
    local = native(args.model, args.outtype, args.tokens, args.repeats)
    ratio = browser["decode_tokens_per_s"] / local["decode_tokens_per_s"]
    print(f"{args.model.name} ({args.outtype}): greedy, {args.tokens} new tokens, 1 thread, "
          f"best of {args.repeats}; site {size['site_mb']} MB (model {size['model_mb']} MB)")
    print(f"{'':24}{'load s':>8}{'TTFT ms':>10}{'decode tok/s':>14}")
    for name, r in (("browser (wllama)", browser), ("llama.cpp native", local)):
        print(f"{name:24}{r['load_s']:>8}{r['ttft_ms']:>10}{r['decode_tokens_per_s']:>14}")
    print(f"browser decode = {ratio:.0%} of native (target >= 25%); "
          f"{browser['blocked_requests']} requests to other hosts")
    if args.json:
        report = {"model": str(args.model), "outtype": args.outtype, "tokens": args.tokens,
                  **size, "browser": browser, "native": local, "decode_ratio": round(ratio, 3)}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
