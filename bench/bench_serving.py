"""Load test of the serving paths, side by side in one run: N concurrent clients for a bounded time.

    python bench/bench_serving.py --model models/tiny-chat [--clients 16 --seconds 30 --think 0]

Paths (each started as users start it, then loaded the same way):
  gradio   `python -m serving.app --backend gguf`, clients through gradio_client's `/chat`
  api      `python -m serving.api --backend gguf`, `openai` clients streaming (one generation at
           a time, as the app does)
  batched  `python -m serving.api --backend gguf --parallel N`: llama.cpp decodes up to N
           requests in one batch (its slots and continuous batching)

Each client asks "What is A + B?" (random A, B) in a loop and streams the reply; time to first
token is when the first non-empty piece arrives at the client, latency when the reply is
complete. Reports requests/s, tokens/s, p50/p95 of both, and errors (must be 0).

A soak (`--paths soak`, not in the default): one `python -m serving.api --backend gguf`, the
same clients measured three times for `--seconds` each: alone; beside `--droppers` polite
clients that each ask for 1-5 tokens and read the reply to its end (the control: the same extra
work on the one model); beside as many droppers that start 400-token streams and leave after
the same 1-5 chunks, again and again. Prints errors (must be 0) and the latency p95 of each
phase; the droppers' p95 over the polite clients' is about 1 when a dropped stream frees the
model at once (over "alone" it also counts the droppers' own generation).

    python bench/bench_serving.py --model M --paths soak --clients 4 --droppers 4 --seconds 20
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
PATHS = ("gradio", "api", "batched")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], log: Path, timeout: float = 300) -> subprocess.Popen:
    """Start a server command and wait for the line with its URL."""
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited ({proc.returncode}); see {log}")
        if "running at" in log.read_text():
            return proc
        time.sleep(0.3)
    proc.terminate()
    sys.exit(f"error: the server did not start within {timeout:.0f} s; see {log}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples it is an observed value)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def gradio_ask(url: str):
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)

    def ask(question: str, max_new_tokens: int):
        job = client.submit(question, 0.0, max_new_tokens, api_name="/chat")
        for piece in job:
            yield piece, None
        yield job.result(), None

    return ask


def openai_ask(url: str, model: str):
    import openai

    client = openai.OpenAI(base_url=f"{url}v1", api_key="unused", max_retries=0, timeout=120)

    def ask(question: str, max_new_tokens: int):
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], temperature=0,
            max_tokens=max_new_tokens, stream=True, stream_options={"include_usage": True})
        text = ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                yield text, None
            if chunk.usage is not None:
                yield text, chunk.usage.completion_tokens

    return ask


def client_loop(make_ask, clock: dict, max_new_tokens: int, think: float, seed: int,
                results: list, errors: list, ready: threading.Barrier, go: threading.Event) -> None:
    rng = random.Random(seed)
    ask = make_ask()
    ready.wait()  # every client is connected before the clock starts
    go.wait()
    time.sleep(rng.uniform(0, think))  # users do not all press Enter in the same millisecond
    while time.monotonic() < clock["end"]:
        question = f"What is {rng.randrange(100)} + {rng.randrange(100)}?"
        start = time.perf_counter()
        first, reply, tokens = None, "", None
        try:
            for reply, count in ask(question, max_new_tokens):
                if first is None and reply:
                    first = time.perf_counter() - start
                tokens = count if count is not None else tokens
            total = time.perf_counter() - start
            if not reply or first is None:
                raise RuntimeError(f"empty reply to {question!r}")
            results.append((first, total, tokens))
        except Exception as err:  # counted and reported; the client keeps going
            errors.append(f"{type(err).__name__}: {err}")
        # a person reads the reply and types the next question (0: back-to-back, a stress test)
        time.sleep(rng.uniform(0.5, 1.5) * think)


def run(make_ask, clients: int, seconds: float, max_new_tokens: int, think: float) -> dict:
    results: list[tuple[float, float, int | None]] = []
    errors: list[str] = []
    ready, go, clock = threading.Barrier(clients + 1), threading.Event(), {}
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(make_ask, clock, max_new_tokens, think, i, results, errors,
                                      ready, go))
               for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=300)
    start = time.monotonic()
    clock["end"] = start + seconds
    go.set()
    for t in threads:
        t.join(seconds + 120)  # a request in flight at the deadline still finishes
    elapsed = time.monotonic() - start
    ttft, total = [r[0] for r in results], [r[1] for r in results]
    counted = [r[2] for r in results if r[2] is not None]
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "clients": clients, "seconds": round(elapsed, 1), "max_new_tokens": max_new_tokens,
        "think_s": think, "requests": len(results), "errors": len(errors),
        "error_samples": errors[:5], "requests_per_s": round(len(results) / elapsed, 2),
        "tokens_per_s": round(sum(counted) / elapsed, 1) if counted else None,
        "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p95_ms": ms(percentile(ttft, 95)),
        "latency_p50_ms": ms(percentile(total, 50)), "latency_p95_ms": ms(percentile(total, 95)),
    }


def drop_streams(url: str, model: str, seed: int, clock: dict, drops: list,
                 errors: list, polite: bool = False) -> None:
    """Until the clock ends: start a long stream, read 1-5 chunks, leave (close the
    connection without reading the rest), pause a moment, again. `polite`: ask for those 1-5
    tokens only and read the reply to its end (the same work, no drop)."""
    import httpx  # imported already by soak(), in the main thread: see there

    rng = random.Random(seed)
    while time.monotonic() < clock["end"]:
        wanted = rng.randint(1, 5)
        body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": wanted if polite else 400, "stream": True, "temperature": 0}
        try:
            with httpx.stream("POST", f"{url}v1/chat/completions", json=body,
                              timeout=120) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
                for i, _ in enumerate(r.iter_lines()):
                    if not polite and i + 1 >= wanted * 2:  # an event: a data + a blank line
                        break
            drops.append(wanted)  # a dropper leaving the block closed the connection
        except Exception as err:  # counted and reported; the dropper keeps going
            errors.append(f"dropper: {type(err).__name__}: {err}")
        time.sleep(rng.uniform(0.0, 0.5))


def beside(url: str, model: str, args: argparse.Namespace, polite: bool) -> tuple[dict, int, list]:
    """The measured clients while `args.droppers` others drop streams (or, polite, finish
    equally short ones); returns their results, the streams the others made, their errors."""
    make = lambda: openai_ask(url, model)  # noqa: E731
    clock, made, errors = {"end": time.monotonic() + args.seconds + 5}, [], []
    others = [threading.Thread(target=drop_streams, daemon=True,
                               args=(url, model, 1000 + i, clock, made, errors, polite))
              for i in range(args.droppers)]
    for t in others:
        t.start()
    measured = run(make, args.clients, args.seconds, args.max_new_tokens, args.think)
    clock["end"] = 0.0  # they finish the stream they are in, then stop
    for t in others:
        t.join(150)
    return measured, len(made), errors


def soak(url: str, model: str, args: argparse.Namespace) -> dict:
    """The same measured clients alone, beside polite clients, beside droppers."""
    import httpx  # noqa: F401  (once, here: threads importing it at once saw it half-made)

    alone = run(lambda: openai_ask(url, model), args.clients, args.seconds,
                args.max_new_tokens, args.think)
    polite, finished, polite_errors = beside(url, model, args, polite=True)
    dropping, drops, errors = beside(url, model, args, polite=False)
    errors += polite_errors
    return {"alone": alone, "with_polite": polite, "with_droppers": dropping,
            "droppers": args.droppers, "polite_streams": finished, "drops": drops,
            "dropper_errors": len(errors), "error_samples": errors[:5],
            "errors": alone["errors"] + polite["errors"] + dropping["errors"] + len(errors),
            "latency_p95_ratio": round(dropping["latency_p95_ms"] / polite["latency_p95_ms"], 2),
            "latency_p95_vs_alone": round(dropping["latency_p95_ms"] / alone["latency_p95_ms"],
                                          2)}


def print_soak(res: dict) -> None:
    alone, polite, dropping = res["alone"], res["with_polite"], res["with_droppers"]
    print(f"soak     {'':14s} {'requests':>8s} {'errors':>6s} {'TTFT p95':>9s} "
          f"{'latency p50':>11s} {'latency p95':>11s}")
    for label, r in (("alone", alone), (f"+{res['droppers']} polite", polite),
                     (f"+{res['droppers']} droppers", dropping)):
        print(f"soak     {label:14s} {r['requests']:8d} {r['errors']:6d} "
              f"{r['ttft_p95_ms']:7.1f}ms {r['latency_p50_ms']:9.1f}ms "
              f"{r['latency_p95_ms']:9.1f}ms", flush=True)
    print(f"soak     {res['drops']} streams dropped ({res['polite_streams']} polite ones "
          f"finished), {res['dropper_errors']} errors of theirs; {res['errors']} errors in all; "
          f"latency p95 with droppers / with polite clients {res['latency_p95_ratio']}x "
          f"({res['latency_p95_vs_alone']}x of alone)")
    for e in res["error_samples"] + alone["error_samples"] + dropping["error_samples"]:
        print("  error:", e)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "tiny-chat")
    p.add_argument("--paths", default=",".join(PATHS),
                   help=f"which of {', '.join(PATHS)}, soak (comma-separated)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--parallel", type=int, default=16, help="slots of the batched path")
    p.add_argument("--seconds", type=float, default=30.0, help="how long clients keep asking")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--think", type=float, default=0.0,
                   help="mean pause between a client's requests in seconds "
                        "(default 0: back-to-back)")
    p.add_argument("--droppers", type=int, default=4,
                   help="soak: clients that start streams and leave after a few chunks")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not args.model.is_dir():
        sys.exit(f"error: {args.model} is not a model folder; run: python -m training.pipeline")
    model = args.model.resolve().name
    report = {"model": str(args.model), "load": os.getloadavg()[0], "paths": {}}
    for path in args.paths.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        module = "serving.app" if path == "gradio" else "serving.api"
        argv_ = ["-m", module, "--model", str(args.model), "--backend", "gguf", "--port", str(port)]
        if path == "batched":
            argv_ += ["--parallel", str(args.parallel)]
        proc = start_server(argv_, Path(f"/tmp/bench_serving_{path}_{port}.log"))
        try:
            if path == "soak":
                report["soak"] = soak(url, model, args)
                print_soak(report["soak"])
                continue
            make = (lambda u=url: gradio_ask(u)) if path == "gradio" else (
                lambda u=url: openai_ask(u, model))
            res = run(make, args.clients, args.seconds, args.max_new_tokens, args.think)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        report["paths"][path] = res
        print(f"{path:8s} {res['requests']:5d} requests ({res['requests_per_s']:6.1f}/s, "
              f"{res['tokens_per_s'] or '-'} tokens/s), {res['errors']} errors; TTFT p50 "
              f"{res['ttft_p50_ms']} / p95 {res['ttft_p95_ms']} ms; latency p50 "
              f"{res['latency_p50_ms']} / p95 {res['latency_p95_ms']} ms", flush=True)
        for e in res["error_samples"]:
            print("  error:", e)
    base = report["paths"].get("gradio", {}).get("requests_per_s")
    if base:
        for path, res in report["paths"].items():
            res["vs_gradio"] = round(res["requests_per_s"] / base, 2)
            print(f"{path:8s} {res['vs_gradio']}x the gradio path's requests/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if any(r.get("errors") for r in [*report["paths"].values(), report.get("soak", {})]):
        sys.exit(1)


if __name__ == "__main__":
    main()
