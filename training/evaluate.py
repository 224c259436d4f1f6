"""Score a chat model on held-out questions: exact-match accuracy per task, and perplexity.

    python -m training.evaluate --model models/tiny-chat [--runtime torch|onnx|gguf] --json OUT.json

Questions come from the held-out split of training/tasks.py: none of them appears in pretraining
text or in the fine-tuning set. Any runtime is scored through serving.runtimes, the same
interface the chat app uses (serving.runtimes). Perplexity is exp(mean loss on the reference
answers' tokens).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.backend import Backend, BackendError, ChatEncoder
from serving.helpers import (
    ArgumentParser,
    UsageError,
    atomic_write_json,
    cli_main,
    first_line,
    made_by_hint,
    require_model,
    require_writable_file,
    weights_fingerprint,
)
from serving.runtimes import RUNTIMES, load_backend, runtime_options
from training import tasks
from training.stage import add_settings_flags, device_field, precision_field, settings_from


@dataclass
class EvalSettings:
    """How python -m training.evaluate scores a model (its flags are these fields; no recipe)."""

    runtime: str = field(default="torch", metadata={"choices": RUNTIMES})
    per_task: int = field(default=200, metadata={"help": "held-out questions per task (max)"})
    seed: int = field(default=0, metadata={"help": "which held-out sample to draw"})
    gguf: Path | None = field(default=None, metadata={
        "help": "with --runtime gguf: which file (default: the f16 export)"})
    device: str = device_field("the torch runtime")
    precision: str = precision_field()
    gpu_layers: int | None = field(default=None, metadata={
        "help": "gguf: layers llama.cpp puts on a GPU (default: all where its build has a GPU "
                "backend, else 0)"})

    def check(self) -> None:
        if self.per_task < 1:
            raise UsageError("--per-task must be >= 1; see: python -m training.evaluate --help")
        if self.gguf and self.runtime != "gguf":
            raise UsageError("--gguf needs --runtime gguf; see: python -m training.evaluate --help")


def exact_match_accuracy(backend: Backend, examples: list[tasks.Example], batch: int = 64,
                         max_new_tokens: int = 32) -> dict:
    """{"tasks": {task: {"accuracy", "n", "correct"}}, "samples": [...], "mistakes": [...]} for one
    backend: samples are the first 3 questions of each task, mistakes the first 10 wrong ones."""
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    samples, mistakes = [], []
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        replies = backend.generate_batch([[{"role": "user",
                                            "content": ex.question}] for ex in chunk],
                                         max_new_tokens=max_new_tokens)
        for ex, reply in zip(chunk, replies):
            ok = ex.correct(reply)
            correct[ex.task] += ok
            total[ex.task] += 1
            row = {"task": ex.task, "question": ex.question, "expected": ex.answer,
                   "reply": reply, "correct": bool(ok)}
            if total[ex.task] <= 3:
                samples.append(row)
            if not ok and total[ex.task] - correct[ex.task] <= 10:
                mistakes.append(row)
    return {
        "tasks": {t: {"accuracy": correct[t] / total[t], "n": total[t], "correct": correct[t]}
                  for t in total},
        "samples": samples,
        "mistakes": mistakes,
    }


def answer_perplexity(model_dir: str | Path, examples: list[tasks.Example],
                      backend: Backend | None = None) -> float:
    """exp(mean next-token loss over assistant-answer tokens), computed with PyTorch: with the
    torch backend's own model when that is the runtime scored (one load, on its device), else
    with the folder loaded on the CPU (llama.cpp and onnxruntime return no logits here)."""
    import torch

    from training.chatdata import IGNORE, encode

    if backend is not None and backend.runtime == "torch":
        model, tok = backend.model, backend.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                         use_safetensors=True).eval()
        except Exception as err:  # corrupt weights or config: many exception types
            raise UsageError(f"cannot load {model_dir}: {first_line(err)}") from None
    chat = ChatEncoder(tok)
    nll, count = 0.0, 0
    where = model.device
    with torch.inference_mode():
        for ex in examples:
            ids, labels = encode(chat, ex.messages(), max_len=10_000)
            logits = model(input_ids=torch.tensor([ids], device=where)).logits[0, :-1]
            target = torch.tensor(labels[1:], device=where)
            keep = target != IGNORE
            losses = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            nll += float(losses)
            count += int(keep.sum())
    return math.exp(nll / max(1, count))


def evaluate(model_dir: str | Path, runtime: str = "torch", per_task: int = 200,
             seed: int = 0, gguf_file: str | Path | None = None, **options: Any) -> dict:
    """The evaluation report for one model folder and runtime (see module doc), with the
    fingerprint of the weights it scored (`made_from`): a later stage that changes them makes
    this report stale, and the pipeline sees it. `options` go to the runtime (e.g. device)."""
    examples = tasks.held_out_examples(per_task, seed)
    try:
        backend = load_backend(model_dir, runtime, gguf_file=gguf_file, **options)
    except BackendError as err:
        raise UsageError(str(err)) from None
    print(f"evaluating on {backend.where}", flush=True)
    report = exact_match_accuracy(backend, examples)
    # Perplexity needs logits; llama.cpp's API does not return them, so it is always PyTorch's.
    report["perplexity"] = round(answer_perplexity(model_dir, examples, backend), 4)
    report["perplexity_runtime"] = "torch"
    return {"model": str(model_dir), "runtime": runtime, "backend": backend.name,
            "where": backend.where, "per_task": per_task, **report,
            "made_from": {"weights": weights_fingerprint(model_dir)}}


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="model folder (e.g. models/tiny-chat)")
    p.add_argument("--json", type=Path, help="write the report here")
    add_settings_flags(p, EvalSettings)
    args = p.parse_args(argv)
    require_model(args.model, made_by_hint(args.model))  # before the settings' checks, as ever
    s = settings_from(EvalSettings, args, None, "evaluate")
    if args.json:
        require_writable_file(args.json)  # before the evaluation, not after
    report = evaluate(args.model, s.runtime, s.per_task, s.seed, s.gguf,
                      **runtime_options(s.runtime, s))
    for task, r in report["tasks"].items():
        print(f"{task:12s} {r['accuracy']:6.1%}  ({r['correct']}/{r['n']})")
    print(f"{'perplexity':12s} {report['perplexity']:.3f}")
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    cli_main(main)()
