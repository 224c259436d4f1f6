"""The third stage: reinforcement learning from a checkable reward (GRPO), or preference tuning
on the model's own right and wrong answers (DPO), with TRL and a LoRA adapter (PEFT).

    python -m training.rl --base models/tiny-chat --out models/tiny-rl [--method grpo|dpo]

GRPO samples `group` answers to each question, rewards the right ones (exact match of the final
answer; see `reward`), and moves the model toward the answers that beat their group's average
(training/grpo.py writes the loss out). DPO first samples answers from the model itself, pairs
a right one (chosen) with a wrong one (rejected) for the same question, and trains on the pairs.
Both can only improve a task the model sometimes gets right: pick one with headroom.

Settings come from <out>/recipe.yaml (section `rl`), then flags. Writes a merged model folder
like the fine-tune's (evaluate, export and serve it the same way), the adapter, rl.json
(accuracy and pass@8 on the task's held-out questions before and after), rl.png (reward and
accuracy over the steps) and a card. --resume continues from the last TRL checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serving import device
from serving.helpers import (
    ArgumentParser,
    UsageError,
    atomic_path,
    atomic_write_json,
    cli_main,
    weights_fingerprint,
)
from training import tasks
from training.generate import answer
from training.stage import (
    CHECKPOINT,
    Finish,
    add_force_flag,
    check_output,
    device_field,
    finish_stage,
    parse_settings,
    precision_field,
    require_positive,
)
from training.trainer import check_resume, set_seed

METHODS = ("grpo", "dpo")


@dataclass
class RLSettings:
    """The `rl` section of a recipe (see models/tiny-rl/recipe.yaml)."""

    base: str = field(default="", metadata={
        "help": "the supervised model (default: the recipe's rl.base)"})
    method: str = field(default="grpo", metadata={"help": "grpo (default) or dpo",
                                                  "choices": METHODS})
    task: str = field(default="sum3", metadata={"help": "the task to improve (default sum3)"})
    steps: int = 150
    prompts_per_step: int = field(default=8, metadata={"help": "questions per step"})
    group: int = field(default=8, metadata={
        "help": "answers sampled per question (GRPO's group; DPO: pairs are picked from them)"})
    max_new_tokens: int = field(default=8, metadata={"help": "the longest answer sampled"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    # a tiny model's flat tail of never-seen byte tokens otherwise outweighs its end-of-turn token
    top_k: int = field(default=0, metadata={
        "help": "sample from the k most likely tokens (0: all)"})
    lr: float = 5e-4
    beta: float = field(default=0.0, metadata={
        "help": "KL penalty toward the starting model (0: none, as in DAPO and nanochat)"})
    format_reward: float = field(default=0.0, metadata={
        "help": "added for an answer that is a bare number, right or wrong"})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO's beta"})
    dpo_questions: int = field(default=512, metadata={
        "help": "training questions sampled for DPO's pairs"})
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int = field(default=25, metadata={"help": "steps between accuracy measures"})
    eval_n: int = field(default=200, metadata={
        "help": "held-out questions for accuracy and pass@8"})
    device: str = device_field()  # TRL places the model itself (trl_placement)
    precision: str = precision_field()

    def check(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"rl.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.task not in tasks.TASKS or self.task == "general":
            raise UsageError(f"rl.task must be one of {', '.join(tasks.TAUGHT)} or another "
                             f"checkable task of training/tasks.py, got {self.task!r}")
        require_positive(steps=self.steps, prompts_per_step=self.prompts_per_step,
                         group=self.group, max_new_tokens=self.max_new_tokens, lr=self.lr,
                         temperature=self.temperature, lora_r=self.lora_r,
                         lora_alpha=self.lora_alpha, eval_n=self.eval_n,
                         dpo_questions=self.dpo_questions, eval_every=self.eval_every)
        if self.group < 2:
            raise UsageError("rl.group must be >= 2: a group of one has no average to beat")
        if min(self.beta, self.format_reward, self.checkpoint_every, self.top_k) < 0:
            raise UsageError("beta, format_reward, checkpoint-every and top_k must be >= 0")


def reward(completion: str, answer: str, format_reward: float = 0.0) -> float:
    """1 for the right final answer (the same exact match as evaluation), plus `format_reward`
    for a reply that is one bare integer (the answer format), right or wrong."""
    right = tasks.normalize_answer(completion) == tasks.normalize_answer(answer)
    bare = tasks.normalize_answer(completion).lstrip("-").isdigit()
    return float(right) + (format_reward if bare else 0.0)


def _text(completion) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    return completion[0]["content"] if isinstance(completion, list) else str(completion)


def sample(model, tok, questions: list[str], n: int, temperature: float, max_new_tokens: int,
           seed: int, top_k: int = 0) -> list[list[str]]:
    """`n` answers per question (greedy when temperature is 0), as text."""
    return [[r.text for r in got] for got in answer(model, tok, questions, n, temperature,
                                                    max_new_tokens, seed, top_k=top_k)]


def measure(model, tok, examples: list[tasks.Example], s: RLSettings, k: int = 8) -> dict:
    """Greedy accuracy (pass@1) and pass@k (any of k samples right, sampled as training
    samples: the stage's temperature and top_k)."""
    questions = [ex.question for ex in examples]
    greedy = sample(model, tok, questions, 1, 0.0, s.max_new_tokens, s.seed)
    sampled = sample(model, tok, questions, k, s.temperature, s.max_new_tokens, s.seed + 1,
                     s.top_k)
    acc = np.mean([ex.correct(g[0]) for ex, g in zip(examples, greedy)])
    pass_k = np.mean([any(ex.correct(a) for a in got) for ex, got in zip(examples, sampled)])
    return {"accuracy": round(float(acc), 4), f"pass_at_{k}": round(float(pass_k), 4),
            "n": len(examples)}


def lora_config(s: RLSettings):
    from peft import LoraConfig

    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def trl_placement(s: RLSettings) -> device.Placement:
    """The placement TRL can honour: it trains on the CPU, MPS or the first visible GPU."""
    placement = device.resolve(s.device, s.precision)
    if placement.device.type == "cuda" and (placement.device.index or 0) != 0:
        raise UsageError(f"--device {s.device}: the RL stage (TRL) trains on the first visible "
                         f"GPU; run: CUDA_VISIBLE_DEVICES={placement.device.index} "
                         f"python -m training.rl --device cuda ...")
    return placement


def common_args(s: RLSettings, ckpt: Path, placement: device.Placement) -> dict:
    """TRL's settings; use_cpu only where the run is on the CPU, autocast by --precision."""
    return dict(output_dir=str(ckpt), use_cpu=placement.device.type == "cpu",
                bf16=placement.precision == "bf16", fp16=placement.precision == "fp16",
                learning_rate=s.lr,
                max_steps=s.steps, seed=s.seed, logging_steps=1, report_to=[],
                save_strategy="steps" if s.checkpoint_every else "no",
                save_steps=s.checkpoint_every or 1, save_total_limit=1,
                gradient_checkpointing=False, lr_scheduler_type="constant_with_warmup",
                warmup_steps=min(10, s.steps // 10), disable_tqdm=False)


def grpo_trainer(s: RLSettings, base: str, train: list[tasks.Example], ckpt: Path, callbacks,
                 placement: device.Placement = device.CPU):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def exact_answer(completions, answer, **_):
        return [reward(_text(c), a, s.format_reward) for c, a in zip(completions, answer)]

    rows = [{"prompt": [{"role": "user", "content": ex.question}], "answer": ex.answer}
            for ex in train]
    args = GRPOConfig(**common_args(s, ckpt, placement),
                      per_device_train_batch_size=s.prompts_per_step * s.group,
                      num_generations=s.group, max_completion_length=s.max_new_tokens,
                      temperature=s.temperature, beta=s.beta, loss_type="dapo", top_k=s.top_k)
    return GRPOTrainer(model=base, reward_funcs=[exact_answer], args=args,
                       train_dataset=Dataset.from_list(rows), peft_config=lora_config(s),
                       callbacks=callbacks)


def dpo_pairs(model, tok, train: list[tasks.Example], s: RLSettings) -> list[dict]:
    """(question, right answer, wrong answer) from the model's own samples: the questions where
    it sometimes gets it right and sometimes not."""
    picked = random.Random(s.seed).sample(train, min(s.dpo_questions, len(train)))
    answers = sample(model, tok, [ex.question for ex in picked], s.group, s.temperature,
                     s.max_new_tokens, s.seed, s.top_k)
    pairs = []
    for ex, got in zip(picked, answers):
        right = sorted({a for a in got if ex.correct(a)})
        wrong = sorted({a for a in got if not ex.correct(a)})
        for i in range(min(len(right), len(wrong))):
            pairs.append({"prompt": [{"role": "user", "content": ex.question}],
                          "chosen": [{"role": "assistant", "content": right[i]}],
                          "rejected": [{"role": "assistant", "content": wrong[i]}]})
    if not pairs:
        raise UsageError(f"the model never (or always) answers {s.task} right in {s.group} "
                         "samples: DPO has no pairs; pick a task with headroom")
    return pairs


def dpo_trainer(s: RLSettings, base: str, pairs: list[dict], ckpt: Path, callbacks,
                placement: device.Placement = device.CPU):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common_args(s, ckpt, placement),
                     per_device_train_batch_size=s.prompts_per_step, beta=s.dpo_beta,
                     max_length=128)
    return DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(pairs),
                      peft_config=lora_config(s), callbacks=callbacks)


def progress_callback(tok, held: list[tasks.Example], s: RLSettings, curve: list):
    """Greedy held-out accuracy every eval_every steps, for the accuracy-over-steps plot."""
    from transformers import TrainerCallback

    class Accuracy(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % s.eval_every == 0 or state.global_step == s.steps:
                greedy = sample(model, tok, [ex.question for ex in held], 1, 0.0,
                                s.max_new_tokens, s.seed)
                acc = float(np.mean([ex.correct(g[0]) for ex, g in zip(held, greedy)]))
                curve.append((state.global_step, round(acc, 4)))

    return Accuracy()


def plot(history: list[dict], curve: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    steps = [h["step"] for h in history if "reward" in h]
    if steps:
        axes[0].plot(steps, [h["reward"] for h in history if "reward" in h], label="reward mean")
        axes[0].plot(steps, [h.get("reward_std", math.nan) for h in history if "reward" in h],
                     label="reward std (within groups)")
    else:  # DPO: its loss and how often the chosen answer is preferred
        dpo = [h for h in history if "loss" in h]
        axes[0].plot([h["step"] for h in dpo], [h["loss"] for h in dpo], label="DPO loss")
        axes[0].plot([h["step"] for h in dpo],
                     [h.get("rewards/accuracies", math.nan) for h in dpo], label="pair accuracy")
    axes[0].set(xlabel="step", title=title)
    axes[0].legend(loc="best", fontsize=8)
    axes[0].grid(alpha=0.3)
    if curve:
        axes[1].plot(*zip(*curve), marker="o")
        for x, y in curve:
            axes[1].annotate(f"{y:.0%}", (x, y), textcoords="offset points", xytext=(0, 6),
                             ha="center", fontsize=8)
    axes[1].set(xlabel="step", ylabel="held-out exact match (greedy)", ylim=(0, 1.05),
                title="accuracy over steps")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    s, args = parse_settings(parser(), RLSettings, "rl", argv)
    out: Path = args.out
    placement = trl_placement(s)
    if not s.base:
        raise UsageError(f"no base model: give --base or set rl.base in {out}/recipe.yaml; "
                         f"run: python -m training.rl --base models/tiny-chat --out {out}")
    from training.finetune import check_base, load_base

    check_output(out, s.base, argv=argv, force=args.force, resume=args.resume)
    check_base(s.base)
    set_seed(s.seed)
    ckpt = start_checkpoint(out / CHECKPOINT, asdict(s), args.resume)
    print(f"running on {placement.describe()}", flush=True)
    model, tok = load_base(s.base, trust_remote_code=False)
    model.to(placement.device)  # sampling the before/after measure and DPO's pairs
    train, held = tasks.TASKS[s.task]()
    held = random.Random(s.seed).sample(held, min(s.eval_n, len(held)))
    t0 = time.perf_counter()
    before = measure(model, tok, held, s)
    print(f"{s.task} before: accuracy {before['accuracy']:.1%}, pass@8 {before['pass_at_8']:.1%}")
    curve: list = [(0, before["accuracy"])]
    trainer = make_trainer(s, model, tok, train, ckpt, [progress_callback(tok, held, s, curve)],
                           placement)
    trainer.train(resume_from_checkpoint=bool(args.resume and any(ckpt.glob("checkpoint-*")))
                  or None)
    adapter, adapter_config, merged = take_adapter(trainer.model)
    after = measure(merged, tok, held, s)
    seconds = round(time.perf_counter() - t0, 1)
    print(f"{s.task} after {s.method}: accuracy {after['accuracy']:.1%}, "
          f"pass@8 {after['pass_at_8']:.1%} ({seconds} s)")
    report = {"method": s.method, "task": s.task, "steps": s.steps, "seconds": seconds,
              "before": before, "after": after, "accuracy_over_steps": curve,
              **placement.record()}
    publish_rl(out, s, report, trainer.state.log_history,
               functools.partial(save, adapter, adapter_config, merged, tok), ckpt)
    print(json.dumps(report))
    print(f"saved {out}")


def parser() -> ArgumentParser:
    """The flags that are not settings; parse_settings adds one flag per setting."""
    p = ArgumentParser(prog="python -m training.rl", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    add_force_flag(p)
    return p


def start_checkpoint(ckpt: Path, settings: dict, resume: bool) -> Path:
    """<out>/checkpoint with the run's settings: checked against them on --resume (check_output
    made sure there is one), else started afresh."""
    if resume:
        check_resume(ckpt, settings)
    elif ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ckpt / "state.json", {"settings": settings})
    return ckpt


def make_trainer(s: RLSettings, model, tok, train: list[tasks.Example], ckpt: Path, callbacks,
                 placement: device.Placement):
    """TRL's GRPO trainer, or DPO's on pairs sampled from the model itself."""
    if s.method == "grpo":
        return grpo_trainer(s, s.base, train, ckpt, callbacks, placement)
    pairs = dpo_pairs(model, tok, train, s)
    print(f"DPO: {len(pairs)} pairs (right vs wrong) from the model's own answers")
    return dpo_trainer(s, s.base, pairs, ckpt, callbacks, placement)


def take_adapter(peft_model):
    """(the adapter's weights on the CPU, its config, the merged model): the adapter alone is
    kept before merging, as merge_and_unload removes it from the model."""
    from peft import get_peft_model_state_dict

    adapter = {k: v.detach().to("cpu").clone().contiguous()
               for k, v in get_peft_model_state_dict(peft_model).items()}
    adapter_config = peft_model.peft_config["default"]
    return adapter, adapter_config, peft_model.merge_and_unload().eval()


def save(adapter: dict, adapter_config, merged, tok, report: dict, history: list[dict],
         title: str, folder: Path) -> None:
    from safetensors.torch import save_file

    adapter_config.save_pretrained(folder / "adapter")  # PEFT format, as finetune writes
    save_file(adapter, folder / "adapter" / "adapter_model.safetensors", {"format": "pt"})
    merged.to("cpu").save_pretrained(folder, safe_serialization=True)  # float32, no device
    tok.save_pretrained(folder)
    atomic_write_json(folder / "rl.json", report)
    plot(history, report["accuracy_over_steps"], folder / "rl.png", title)


def publish_rl(out: Path, s: RLSettings, report: dict, history: list[dict], save_model,
               ckpt: Path) -> None:
    """The model folder: weights, adapter, rl.json, rl.png, eval.json, loss.png and card."""
    title = f"{s.method.upper()} on {s.task}"
    loss_history = [(h["step"], round(h["loss"], 5)) for h in history if "loss" in h]
    metrics = {k: v for k, v in report.items() if k != "accuracy_over_steps"}
    made_from = {"base": s.base, "base_weights": weights_fingerprint(s.base)}
    finish_stage(out, Finish(
        functools.partial(save_model, report, history, title),
        {**metrics, "settings": asdict(s), "made_from": made_from}, loss_history,
        f"{out.name}: {s.method.upper()} of {Path(s.base).name} on {s.task}",
        functools.partial(card, s, report), functools.partial(evaluate_rl, s, out)), ckpt)


def evaluate_rl(s: RLSettings, out: Path, folder: Path) -> dict:
    from training.evaluate import evaluate

    where = {"device": s.device, "precision": s.precision}  # where the training ran
    return {"rl": {**evaluate(folder, "torch", 200, **where), "model": str(out)}}


def card(s: RLSettings, report: dict, evals: dict) -> dict:
    before, after = report["before"], report["after"]
    table = {t: f"{r['accuracy']:.1%} ({r['correct']}/{r['n']})"
             for t, r in evals["rl"]["tasks"].items()}
    return {
        "What": f"{s.base} after {s.method.upper()} on the task {s.task!r} "
                "(`python -m training.rl`), LoRA merged into the weights.",
        f"{s.task}: before and after (held-out)": {
            "accuracy (greedy)": f"{before['accuracy']:.1%} → {after['accuracy']:.1%}",
            "pass@8 (temperature 1)": f"{before['pass_at_8']:.1%} → {after['pass_at_8']:.1%}",
            "seconds": report["seconds"]},
        "Settings": asdict(s),
        "Every task (held-out, exact match)": table,
        "Reward and accuracy over steps": "![rl](rl.png)",
    }


if __name__ == "__main__":
    cli_main(main)()
