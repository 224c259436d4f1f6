"""Load test of the chat app: N concurrent gradio_client clients for a bounded time.

    python bench/bench_serving.py --model models/tiny-chat --backend gguf      # starts the app
    python bench/bench_serving.py --url http://127.0.0.1:7860/                 # an app already up

Each client asks "What is A + B?" (random A, B) through the `/chat` API in a loop, streaming the
reply; time to first token is when the first non-empty piece arrives at the client, total latency
when the reply is complete. Reports requests done, errors (must be 0), p50/p95 of both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, backend: str, port: int, log: Path,
                 timeout: float = 180) -> subprocess.Popen:
    """Start serving.app and wait for the line with its URL."""
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "serving.app", "--model", str(model),
                             "--backend",
                             backend, "--port", str(port)], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the app exited ({proc.returncode}); see {log}")
        if "running at" in log.read_text():
            return proc
        time.sleep(0.3)
    proc.terminate()
    sys.exit(f"error: the app did not start within {timeout:.0f} s; see {log}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples it is an observed value)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def client_loop(url: str, clock: dict, max_new_tokens: int, think: float, seed: int,
                results: list, errors: list, ready: threading.Barrier, go: threading.Event) -> None:
    from gradio_client import Client

    rng = random.Random(seed)
    client = Client(url, verbose=False, download_files=False)
    ready.wait()  # every client is connected before the clock starts
    go.wait()
    time.sleep(rng.uniform(0, think))  # users do not all press Enter in the same millisecond
    while time.monotonic() < clock["end"]:
        question = f"What is {rng.randrange(100)} + {rng.randrange(100)}?"
        start = time.perf_counter()
        first = None
        try:
            job = client.submit(question, 0.0, max_new_tokens, api_name="/chat")
            for piece in job:  # streamed updates, as they arrive
                if first is None and piece:
                    first = time.perf_counter() - start
            reply = job.result()
            total = time.perf_counter() - start
            if not reply or first is None:
                raise RuntimeError(f"empty reply to {question!r}")
            results.append((first, total))
        except Exception as err:  # counted and reported; the client keeps going
            errors.append(f"{type(err).__name__}: {err}")
        # a person reads the reply and types the next question (0: back-to-back, a stress test)
        time.sleep(rng.uniform(0.5, 1.5) * think)


def run(url: str, clients: int, seconds: float, max_new_tokens: int, think: float = 0.0) -> dict:
    results: list[tuple[float, float]] = []
    errors: list[str] = []
    ready, go, clock = threading.Barrier(clients + 1), threading.Event(), {}
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(url, clock, max_new_tokens, think, i, results, errors, ready,
                                      go))
               for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=120)
    start = time.monotonic()
    clock["end"] = start + seconds
    go.set()
    for t in threads:
        t.join(seconds + 120)  # a request in flight at the deadline still finishes
    elapsed = time.monotonic() - start
    ttft = [r[0] for r in results]
    total = [r[1] for r in results]
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "url": url, "clients": clients, "seconds": round(elapsed, 1),
        "max_new_tokens": max_new_tokens, "think_s": think, "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:5], "requests_per_s": round(len(results) / elapsed, 2),
        "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p95_ms": ms(percentile(ttft, 95)),
        "latency_p50_ms": ms(percentile(total, 50)), "latency_p95_ms": ms(percentile(total, 95)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="an app already running (default: start one)")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "tiny-chat")
    p.add_argument("--backend", choices=("torch", "onnx", "gguf"), default="gguf")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0, help="how long clients keep asking")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--think", type=float, default=0.0,
                   help="mean pause between a client's requests in seconds "
                        "(default 0: back-to-back)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        if not args.model.is_dir():
            sys.exit(f"error: {args.model} is not a model folder; build it or pass --url")
        port = free_port()
        proc = start_server(args.model, args.backend, port, Path(f"/tmp/bench_serving_{port}.log"))
        url = f"http://127.0.0.1:{port}/"
    try:
        res = run(url, args.clients, args.seconds, args.max_new_tokens, args.think)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    res["backend"] = args.backend if args.url is None else "?"
    print(f"{res['clients']} clients (think {res['think_s']} s), {res['seconds']} s, "
          f"backend {res['backend']}: "
          f"{res['requests']} requests ({res['requests_per_s']}/s), {res['errors']} errors")
    print(f"time to first token  p50 {res['ttft_p50_ms']} ms   p95 {res['ttft_p95_ms']} ms")
    print(f"total latency        p50 {res['latency_p50_ms']} ms   p95 {res['latency_p95_ms']} ms")
    for e in res["error_samples"]:
        print("  error:", e)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    if res["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
