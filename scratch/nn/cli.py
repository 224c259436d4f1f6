"""python -m scratch.nn --task digits-mlp|digits-cnn|char-gpt [--epochs N] [--seed S] --json OUT
python -m scratch.nn --task llama-chat --out models/scratch-chat [--steps N] --json OUT"""

from __future__ import annotations

import json
from pathlib import Path

from threadpoolctl import threadpool_limits

from scratch import helpers
from scratch.nn import llama_chat, train
from scratch.nn.train import DEFAULT_EPOCHS

PROG = "python -m scratch.nn"
TASKS = (*DEFAULT_EPOCHS, "llama-chat")


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(
        prog=PROG,
        description="Train a network with scratch/nn (numpy only) and report its numbers.",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument(
        "--epochs",
        type=helpers.int_range(1),
        help=f"passes over the data; for char-gpt, 250-step rounds (defaults: {DEFAULT_EPOCHS})",
    )
    parser.add_argument("--seed", type=helpers.int_range(0), default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--text",
        type=Path,
        help="char-gpt: train on this UTF-8 file (default: pydoc pages of a few stdlib modules)",
    )
    parser.add_argument("--data", type=Path, help="mnist-mlp: folder with MNIST's IDX files")
    parser.add_argument(
        "--threads",
        type=helpers.int_range(1),
        default=1,
        help="BLAS threads (default 1: small matmuls gain little, and a busy "
        "core stalls multi-threaded BLAS)",
    )
    parser.add_argument("--save", type=Path, help="write the trained weights (.npz)")
    parser.add_argument(
        "--out",
        type=Path,
        help="llama-chat: the model folder to write (a Hugging Face LlamaForCausalLM folder)",
    )
    parser.add_argument(
        "--steps",
        type=helpers.int_range(1),
        help=f"llama-chat: training steps (default {llama_chat.DEFAULTS['steps']})",
    )
    parser.add_argument(
        "--eval-every",
        type=helpers.int_range(0),
        default=0,
        help="llama-chat: also measure held-out accuracy on 400 questions every N steps "
        "(off the clock), reported as `curve`",
    )
    args = parser.parse_args(argv)
    if args.task == "llama-chat":
        return run_llama_chat(parser, args)
    for flag in ("out", "steps"):
        if getattr(args, flag) is not None:
            parser.error(f"--{flag} is for --task llama-chat only")
    if args.eval_every:
        parser.error("--eval-every is for --task llama-chat only")

    epochs = DEFAULT_EPOCHS[args.task] if args.epochs is None else args.epochs
    if args.task == "mnist-mlp" and args.data is None:
        parser.error("mnist-mlp needs --data DIR (a folder with MNIST's IDX files)")
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file")

    try:
        threadpool_limits(args.threads)
        if args.task == "char-gpt":
            text = args.text.read_text(encoding="utf-8") if args.text else None
            if text is not None and len(text) < 1000:
                raise ValueError(f"{args.text}: too short to train on (need 1000+ characters)")
            result = train.run_char_gpt(epochs, args.seed, text)
        elif args.task == "mnist-mlp":
            result = train.run_mnist(str(args.data), epochs, args.seed)
        else:
            result = train.run_digits(args.task.split("-")[1], epochs, args.seed)
    except (OSError, ValueError) as error:  # unreadable or unusable data files
        raise helpers.UsageError(error) from None

    model = result.pop("model")
    result.pop("history")
    if args.save:
        model.save(args.save)
    if "sample" in result:
        print(result["sample"])
    print(json.dumps({k: v for k, v in result.items() if k != "sample"}))
    if args.json:
        helpers.write_json(args.json, result, indent=2)
    return 0


def run_llama_chat(parser, args) -> int:
    if args.out is None:
        parser.error("llama-chat needs --out DIR (e.g. --out models/scratch-chat)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    for flag in ("epochs", "text", "data", "save"):
        if getattr(args, flag) is not None:
            parser.error(f"--{flag} does not apply to llama-chat")
    threadpool_limits(args.threads)
    settings = {} if args.steps is None else {"steps": args.steps}
    try:
        result = llama_chat.run(args.out, settings, args.seed, args.eval_every)
    except ValueError as error:
        raise helpers.UsageError(error) from None
    print(json.dumps({k: result[k] for k in ("test_accuracy", "seconds", "parameters")}))
    print(f"wrote {args.out}; next: python scripts/export_gguf.py {args.out}")
    if args.json:
        helpers.write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
