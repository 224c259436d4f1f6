"""Fine-tune a base model into a chat model with LoRA (PEFT), loss on assistant tokens only.

    python -m training.finetune --base models/tiny-base --out models/tiny-chat [--resume]
    python -m training.finetune --base HuggingFaceTB/SmolLM2-135M-Instruct \
        --dataset my.jsonl --out models/smol-chat

Settings come from <out>/recipe.yaml (section `finetune`) when it exists, then from flags.
Writes the LoRA adapter (adapter/), the merged model that `AutoModelForCausalLM.from_pretrained`
loads alone, the tokenizer, eval.json (base vs fine-tuned), loss.png and a model card.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from serving import device
from serving.helpers import (
    ArgumentParser,
    UsageError,
    cli_main,
    first_line,
    made_by_hint,
    require_model,
    weights_fingerprint,
)
from training.chatdata import (
    BUILTIN,
    Row,
    encode_rows,
    load_rows,
    pad_batch,
    write_jsonl,
)
from training.generate import answer
from training.stage import (
    CHECKPOINT,
    Finish,
    add_force_flag,
    check_output,
    device_field,
    finish_stage,
    looks_like_hub_id,
    parse_settings,
    precision_field,
    require_positive,
)
from training.tasks import GENERAL_PROMPTS, TASKS, TAUGHT
from training.trainer import TrainConfig, start_run, train


@dataclass
class FinetuneSettings:
    """The `finetune` section of a recipe (see models/tiny-chat/recipe.yaml)."""

    base: str = field(default="", metadata={
        "help": "base model: local folder (models/tiny-base) or hub id (default: the recipe's)",
        "aliases": ("--base-model",)})
    dataset: str = field(default=BUILTIN, metadata={
        "help": "'builtin' (default), a .jsonl/.json/.parquet file or folder, or a hub id"})
    split: str = field(default="train", metadata={"help": "the dataset's split"})
    tasks: list = field(default_factory=lambda: list(TAUGHT),
                        metadata={"help": "built-in tasks taught, JSON"})
    task_limit: dict = field(default_factory=dict, metadata={
        "help": "at most this many questions of a task, JSON"})
    turns: int = field(default=1, metadata={
        "help": "built-in questions per conversation (see chatdata.builtin_rows)"})
    general_replay: int = field(default=0, metadata={
        "help": "times the base's own replies to everyday prompts are mixed in"})
    replay_tokens: int = field(default=64, metadata={"help": "the longest of those replies"})
    steps: int = 1700
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = field(default=50, metadata={"help": "learning-rate warm-up steps"})
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = field(default="all-linear",
                                metadata={"help": "the modules LoRA adapts (PEFT's names)"})
    lora_layers: list = field(default_factory=list, metadata={
        "help": "only these layer indices, JSON (empty: all)"})
    max_len: int = field(default=256, metadata={"help": "longest conversation, in tokens"})
    seed: int = 0
    checkpoint_every: int = 100
    eval_per_task: int = field(default=200, metadata={
        "help": "held-out questions per task in the final evaluation"})
    curve_every: int = field(default=0, metadata={
        "help": "measure held-out accuracy every this many steps (0: only at the end)"})
    curve_per_task: int = field(default=100, metadata={
        "help": "questions per taught task for each point of that curve"})
    device: str = device_field()
    precision: str = precision_field()

    def check(self) -> None:
        require_positive(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                         lora_r=self.lora_r, lora_alpha=self.lora_alpha, max_len=self.max_len,
                         eval_per_task=self.eval_per_task)
        known = [t for t in TASKS if t != "general"]  # general's answers are the base's own
        unknown = sorted(set(self.tasks) - set(known))
        if unknown or not self.tasks:
            raise UsageError(f"finetune.tasks must be some of {', '.join(known)}; "
                             f"got {self.tasks}")
        if self.turns < 1 or self.general_replay < 0 or self.replay_tokens < 1:
            raise UsageError("turns and replay_tokens must be >= 1, general_replay >= 0")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.warmup < 0 or self.checkpoint_every < 0:
            raise UsageError("warmup and checkpoint-every must be >= 0")


def check_base(name: str) -> None:
    """A base that is a finished local folder or looks like a hub id, checked before any work."""
    if Path(name).exists():
        require_model(name, made_by=made_by_hint(name) if Path(name, "recipe.yaml").exists()
                      else f"python -m training.pretrain --out {name}")
    elif not looks_like_hub_id(name):
        raise UsageError(f"base model {name!r} is neither a local folder nor a hub id; "
                         f"run: python -m training.pretrain --out {name}")


def load_base(name: str, trust_remote_code: bool):
    """Model and tokenizer from a local folder or a hub id (no remote code unless asked;
    weights from safetensors only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_base(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32,
                                                     use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except Exception as err:  # corrupt weights, bad config, no network: many exception types
        raise UsageError(f"cannot load base model {name!r}: {first_line(err)}") from None
    if tok.chat_template is None:
        raise UsageError(f"{name}: tokenizer has no chat template; use a model that has one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def self_distilled_rows(model, tok, prompts: list[str], max_new_tokens: int) -> list[Row]:
    """The base model's own greedy replies to `prompts`, as training conversations. Mixed into
    a fine-tune, they keep the model answering everyday requests the way it did before
    ("self-distillation", a cheap guard against forgetting). A reply cut off at the length
    limit ends at its last full sentence, so no conversation teaches stopping mid-sentence."""
    rows = []
    for q, (reply,) in zip(prompts, answer(model, tok, prompts, 1, 0.0, max_new_tokens, batch=16)):
        text = reply.text.strip()
        if not reply.finished:  # cut off: keep whole sentences
            text = text[: text.rfind(".") + 1] if "." in text else ""
        if text:
            rows.append(Row([{"role": "user", "content": q},
                             {"role": "assistant", "content": text}], f"replay of {q!r}"))
    return rows


def learning_curve(model, tok, s: FinetuneSettings, curve: list):
    """An on_step callback: held-out greedy accuracy of the taught tasks every curve_every
    steps (and at step 0's end), appended to `curve` as {"step", task: accuracy}."""
    from training import tasks

    held = [ex for ex in tasks.held_out_examples(s.curve_per_task, s.seed) if ex.task in s.tasks]

    def measure(step: int) -> None:
        if step % s.curve_every and step not in (1, s.steps):
            return
        replies = answer(model, tok, [ex.question for ex in held], max_new_tokens=32)
        point: dict = {"step": step}
        for task in s.tasks:
            got = [ex.correct(r[0].text) for ex, r in zip(held, replies) if ex.task == task]
            point[task] = round(sum(got) / max(1, len(got)), 4)
        curve.append(point)
        print(f"step {step}: " + ", ".join(f"{t} {point[t]:.1%}" for t in s.tasks), flush=True)

    return measure


def add_lora(model, s: FinetuneSettings):
    from peft import LoraConfig, get_peft_model

    targets = s.target_modules
    if s.lora_layers and targets == "all-linear":  # PEFT wants the names to pick layers by
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and "lm_head" not in name})
    # Adapters on the upper layers only also end backpropagation there: the layers below
    # need no gradients at all, so a step costs less.
    try:
        config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                            target_modules=targets, task_type="CAUSAL_LM",
                            layers_to_transform=list(s.lora_layers) or None)
        return get_peft_model(model, config)
    except ValueError as err:  # a module or layer the model does not have
        raise UsageError(f"LoRA settings do not fit this model: {first_line(err)}") from None


def main(argv: list[str] | None = None) -> None:
    s, args = parse_settings(parser(), FinetuneSettings, "finetune", argv)
    out: Path = args.out
    placement = device.resolve(s.device, s.precision)
    if not s.base:
        raise UsageError(f"no base model: give --base or set finetune.base in {out}/recipe.yaml; "
                         f"run: python -m training.finetune --base models/tiny-base --out {out}")
    check_output(out, s.base, argv=argv, force=args.force, resume=args.resume)
    check_base(s.base)
    rank, world = start_run(out, s.seed, placement)
    model, tok, rows, enc = prepare(s, args.trust_remote_code, args.bad_rows, placement, rank)
    cfg = TrainConfig(steps=s.steps, lr=s.lr, warmup=min(s.warmup, s.steps // 2 or 1),
                      batch_size=s.batch_size, seed=s.seed, weight_decay=0.0,
                      checkpoint_every=s.checkpoint_every)
    ckpt = out / CHECKPOINT
    curve: list[dict] = []
    result = train(model, functools.partial(pad_batch, enc, pad=tok.pad_token_id),
                   len(enc.input_ids), cfg, ckpt, resume=args.resume, desc="finetune",
                   lengths=enc.lengths(), settings=asdict(s),
                   on_step=learning_curve(model, tok, s, curve) if s.curve_every else None,
                   placement=placement)
    if rank != 0:
        return
    metrics = run_metrics(model, s, enc, result, curve, world, placement)
    made_from = {"base": s.base, "base_weights":
                 weights_fingerprint(s.base) if Path(s.base).is_dir() else None}
    evals = finish_stage(out, Finish(
        functools.partial(save, model, tok, rows, s),
        {**metrics, "settings": asdict(s), "made_from": made_from}, result.history,
        f"{out.name}: a LoRA chat fine-tune of {s.base}",
        functools.partial(card, s, len(enc.input_ids), metrics),
        None if args.no_eval else functools.partial(evaluate_with_base, s, out)), ckpt)
    print(json.dumps({"metrics": metrics, "eval": eval_table(evals)}, indent=1))
    print(f"saved {out}")


def parser() -> ArgumentParser:
    """The flags that are not settings; parse_settings adds one flag per setting."""
    p = ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path,
                   help="model folder to write (e.g. models/tiny-chat)")
    p.add_argument("--bad-rows", choices=["skip", "reject"], default="skip",
                   help="what to do with rows that have an unknown role, empty content or "
                        "are too long")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    add_force_flag(p)
    p.add_argument("--no-eval", action="store_true", help="skip the base vs fine-tuned evaluation")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub (off by default: it runs arbitrary code)")
    return p


def prepare(s: FinetuneSettings, trust_remote_code: bool, bad_rows: str,
            placement: device.Placement, rank: int):
    """The conversations, encoded, and the base model with LoRA adapters on the device."""
    rows = load_rows(s.dataset, s.split, taught=s.tasks, turns=s.turns, seed=s.seed,
                     limit=s.task_limit)
    model, tok = load_base(s.base, trust_remote_code)
    model.to(placement.device)
    if s.general_replay:
        replay = self_distilled_rows(model, tok, GENERAL_PROMPTS, s.replay_tokens)
        rows += replay * s.general_replay
        if rank == 0:
            print(f"mixed in the base model's own replies to {len(replay)} everyday prompts, "
                  f"{s.general_replay}x")
    enc = encode_rows(tok, rows, s.max_len, bad_rows)
    torch.manual_seed(s.seed)
    model = add_lora(model, s)
    trainable, total = parameter_counts(model)
    if rank == 0:
        print(f"LoRA r={s.lora_r}: {trainable:,} trainable of {total:,} parameters "
              f"({trainable / total:.1%}); {len(enc.input_ids):,} training conversations")
    return model, tok, rows, enc


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, all) parameters."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def run_metrics(model, s: FinetuneSettings, enc, result, curve: list[dict], world: int,
                placement: device.Placement) -> dict:
    trainable, total = parameter_counts(model)
    return {
        "base_model": s.base,
        "dataset": s.dataset,
        "conversations": len(enc.input_ids),
        "bad_rows_skipped": sum(enc.bad.values()),
        "steps": s.steps,
        "train_seconds": round(result.seconds, 1),
        "tokens_seen": result.tokens,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "final_train_loss": result.history[-1][1],
        "accuracy_over_steps": curve,
        "world_size": world,
        **placement.record(),
        "rank_checksums": result.rank_checksums,
    }


def save(model, tok, rows: list[Row], s: FinetuneSettings, folder: Path) -> None:
    model.to("cpu")  # float32 safetensors that name no device, whatever trained them
    model.save_pretrained(folder / "adapter")  # PEFT format: adapter_config.json + safetensors
    model.merge_and_unload().save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if s.dataset == BUILTIN:
        write_jsonl(folder / "data" / "train.jsonl", [{"messages": r.messages} for r in rows])


def evaluate_with_base(s: FinetuneSettings, out: Path, folder: Path) -> dict:
    """eval.json: the fine-tuned model, and the base beside it when it is a local folder."""
    from training.evaluate import evaluate

    where = {"device": s.device, "precision": s.precision}  # where the training ran
    evals = {"fine_tuned": {**evaluate(folder, "torch", s.eval_per_task, **where),
                            "model": str(out)}}
    if Path(s.base).is_dir():
        evals["base"] = evaluate(s.base, "torch", s.eval_per_task, **where)
    return evals


def eval_table(evals: dict) -> dict[str, str]:
    """Accuracy per model and task, and answer perplexity: the card's table, and main's."""
    table: dict[str, str] = {}
    for which, rep in evals.items():
        for task, r in rep["tasks"].items():
            table[f"{which} {task}"] = f"{r['accuracy']:.1%} ({r['correct']}/{r['n']})"
        table[f"{which} answer perplexity"] = rep["perplexity"]
    return table


def card(s: FinetuneSettings, conversations: int, metrics: dict, evals: dict) -> dict:
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    return {
        "What": "A chat model made by `python -m training.finetune`: LoRA adapters trained on "
                "the conversations below, then merged into the base weights. `adapter/` holds "
                "the adapter alone (PEFT format).",
        "Data": f"{s.dataset}: {conversations:,} conversations"
                + (" (generated: arithmetic, word reversal, the project's ML glossary; "
                   "see data/train.jsonl)" if s.dataset == BUILTIN else ""),
        "LoRA": {"r": s.lora_r, "alpha": s.lora_alpha, "target_modules": s.target_modules,
                 "trainable parameters": f"{trainable:,} of {total:,} ({trainable / total:.1%})"},
        "Training": {k: asdict(s)[k] for k in ("steps", "batch_size", "lr", "warmup", "seed")},
        "Metrics": {k: v for k, v in metrics.items() if k != "rank_checksums"},
        "Evaluation (held-out questions, exact match)": eval_table(evals) or "skipped (--no-eval)",
        "Loss curve": "![loss](loss.png)",
    }


if __name__ == "__main__":
    cli_main(main)()
