"""The whole pipeline on the embedded default, one stage after another, reusing finished ones.

    python -m training.pipeline [--serve] [--force]

Stages: pretrain models/tiny-base → LoRA fine-tune models/tiny-chat → export ONNX and GGUF →
evaluate on every runtime → (with --serve) start the chat app. Each stage is its own command;
this module only decides which still need to run and runs them in order.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from training.common import UsageError, cli_main

BASE = Path("models/tiny-base")
CHAT = Path("models/tiny-chat")


def stages(serve: bool, backend: str) -> list[tuple[str, list[str], Path | None]]:
    """(name, command, file that exists once the stage has finished)."""
    py = [sys.executable]
    out = [
        ("pretrain", py + ["-m", "training.pretrain", "--out", str(BASE)], BASE / "metrics.json"),
        ("finetune", py + ["-m", "training.finetune", "--base", str(BASE), "--out", str(CHAT)],
         CHAT / "eval.json"),
    ]
    export_onnx = Path("scripts/export_onnx.py")
    if export_onnx.exists():
        out.append(("export onnx", py + [str(export_onnx), str(CHAT), "--force"],
                    CHAT / "onnx" / "model.onnx"))
    export_gguf = Path("scripts/export_gguf.py")
    if export_gguf.exists():
        for outtype in ("f16", "q8_0"):
            out.append((f"export gguf {outtype}",
                        py + [str(export_gguf), str(CHAT), "--outtype", outtype, "--force"],
                        CHAT / "gguf" / f"{CHAT.name}-{outtype}.gguf"))
    runtimes = ["torch"] + (["onnx"] if export_onnx.exists() else []) + (
        ["gguf"] if export_gguf.exists() else [])
    for rt in runtimes:
        out.append((f"evaluate {rt}", py + ["-m", "training.evaluate", "--model", str(CHAT),
                                            "--runtime", rt, "--json", str(CHAT / f"eval-{rt}.json")],
                    CHAT / f"eval-{rt}.json"))
    if export_gguf.exists():  # what 8-bit quantization costs, on the same questions
        q8 = CHAT / "gguf" / f"{CHAT.name}-q8_0.gguf"
        out.append(("evaluate gguf q8_0", py + ["-m", "training.evaluate", "--model", str(CHAT),
                                                "--runtime", "gguf", "--gguf", str(q8), "--json",
                                                str(CHAT / "eval-gguf-q8_0.json")],
                    CHAT / "eval-gguf-q8_0.json"))
    if serve:
        out.append(("serve", py + ["-m", "serving.app", "--model", str(CHAT), "--backend", backend],
                    None))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--serve", action="store_true", help="finish by starting the chat app")
    p.add_argument("--backend", default="gguf", choices=["torch", "onnx", "gguf"],
                   help="runtime for the chat app (default gguf: the fastest)")
    p.add_argument("--force", action="store_true", help="redo every stage, even finished ones")
    args = p.parse_args(argv)
    if not Path("training").is_dir():
        raise UsageError("run the pipeline from the repository root")
    t0 = time.perf_counter()
    for name, cmd, done in stages(args.serve, args.backend):
        if done is not None and done.exists() and not args.force:
            print(f"== {name}: done already ({done})")
            continue
        print(f"== {name}: {' '.join(cmd[1:])}  [{time.perf_counter() - t0:.0f}s]", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise UsageError(f"stage '{name}' failed; fix it and re-run (finished stages are kept)")


if __name__ == "__main__":
    cli_main(main)()
