"""Federated LoRA fine-tuning of a chat model on Flower, each client holding one slice of the chat
data (one client only sums, one only differences, one only the glossary, ...).

    python -m training.federated --base models/tiny-base --clients 3 --rounds R --json OUT

Only the LoRA adapter's arrays travel (server -> clients and back); the base weights are loaded
by every client from its own copy of the base folder and never move. Three runs, compared on the
held-out questions of every task any client holds:

  federated      Flower's FedAvg over the clients' adapters, R rounds of S local steps each;
  centralized    one adapter on the pooled slices, with the federated run's total compute
                 (clients x R x S steps of the same batch size);
  clients_alone  each client on its own slice only, with the compute it spent in the
                 federation (R x S steps, the batches it saw there).

All three train with the fine-tune stage's loop (training/trainer.py) and its schedule over the
run; a federated client runs round r's window of it from a fresh optimizer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.helpers import UsageError
from training.federated.cli_common import comma_list, number
from training.stage import device_field, flag_name, precision_field

if TYPE_CHECKING:
    from training.trainer import TrainConfig

# The order tasks are dealt to clients in: with 3 clients and all four tasks, client 0 holds
# addition and reverse, client 1 subtraction, client 2 the glossary.
TASK_ORDER = ("addition", "subtraction", "glossary", "reverse")
WEIGHTINGS = ("uniform", "examples")


@dataclass
class LoraSettings:
    """The federated LoRA run's settings; its flags (python -m training.federated) are these
    fields (training.stage.add_settings_flags). No recipe: the defaults, then the flags."""

    base: str = field(default="models/tiny-base",
                      metadata={"help": "the base model folder (default models/tiny-base)"})
    clients: int = 3
    rounds: int = 50
    # few steps between averages: less drift towards one task
    local_steps: int = field(default=10, metadata={
        "help": "optimizer steps each client takes per round"})
    batch_size: int = 32
    # peak: warm-up, then cosine decay over each run (training.trainer)
    lr: float = field(default=3e-3, metadata={"type": number(positive=True)})
    warmup: int = field(default=50, metadata={"help": "learning-rate warm-up steps"})
    lora_r: int = 16
    # Follows lora_r unless given (the CLI always set it to 2 * lora_r; now it says so).
    lora_alpha: int | None = field(default=None, metadata={
        "help": "LoRA's alpha (default: 2 * lora-r)"})
    tasks: list = field(default_factory=lambda: ["addition", "subtraction", "glossary"],
                        metadata={"type": comma_list, "help": "tasks dealt out to the clients, "
                                  f"some of {','.join(TASK_ORDER)} (default "
                                  "addition,subtraction,glossary)"})
    weighting: str = field(default="uniform", metadata={
        "choices": WEIGHTINGS, "help": "FedAvg weights: equal per client (each takes the same "
        "number of steps) or by the number of examples it holds"})
    seed: int = 0
    per_task: int = field(default=50, metadata={
        "help": "held-out questions per task in the evaluation"})
    max_len: int = field(default=128, metadata={"help": "longest conversation, in tokens"})
    noise: float = field(default=0.0, metadata={
        "type": number(), "help": "noise multiplier of Flower's "
        "DifferentialPrivacyClientSideFixedClipping (0: plain FedAvg)"})
    clip: float = field(default=1.0, metadata={
        "type": number(positive=True),
        "help": "clipping norm of each client's adapter update, with --noise"})
    # where every client trains (serving/device.py); on a GPU they share it
    device: str = device_field("every client's model")
    precision: str = precision_field()

    def __post_init__(self) -> None:
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r

    def placement(self):
        from serving.device import resolve

        return resolve(self.device, self.precision)

    def slices(self) -> list[list[str]]:
        """Which tasks each client holds."""
        order = [t for t in TASK_ORDER if t in self.tasks]
        return [order[k::self.clients] for k in range(self.clients)]

    def check(self) -> None:
        for name in ("clients", "rounds", "local_steps", "batch_size", "lora_r", "lora_alpha",
                     "per_task"):
            if getattr(self, name) < 1:
                raise UsageError(f"{flag_name(name)} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        unknown = sorted(set(self.tasks) - set(TASK_ORDER))
        if unknown or not self.tasks:
            raise UsageError(f"--tasks must be some of {','.join(TASK_ORDER)}; got "
                             f"{','.join(self.tasks) or 'none'}")
        if self.clients > len(self.tasks):
            raise UsageError(f"--clients {self.clients}: only {len(self.tasks)} tasks to deal "
                             f"out (one or more per client); use --clients {len(self.tasks)} "
                             "or fewer")
        if self.weighting not in WEIGHTINGS:
            raise UsageError(f"--weighting must be one of {', '.join(WEIGHTINGS)}")
        self.placement()  # an absent device: one line now, not in a client process later


# ---------------------------------------------------------------- model, data, local training


def load_lora_model(s: LoraSettings):
    """The base with fresh LoRA adapters (the same initial adapter for a given seed)."""
    import torch

    from training.finetune import FinetuneSettings, add_lora, load_base

    model, tok = load_base(s.base, trust_remote_code=False)
    torch.manual_seed(s.seed)
    model = add_lora(model, FinetuneSettings(lora_r=s.lora_r, lora_alpha=s.lora_alpha))
    return model.to(s.placement().device), tok


def adapter_arrays(model) -> dict[str, np.ndarray]:
    """The trainable (LoRA) parameters: all that travels."""
    return {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()
            if p.requires_grad}


def set_adapter(model, arrays: dict[str, np.ndarray]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in arrays.items():
            params[name].copy_(torch.from_numpy(np.asarray(value)))


def full_weight_bytes(model) -> int:
    """Bytes of the model's own weights (tied ones once, the adapter's not counted): what a
    round would send per client and direction if it fine-tuned all of them."""
    seen, total = set(), 0
    for p in model.parameters():
        if not p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def train_config(s: LoraSettings, steps: int) -> TrainConfig:
    """The fine-tune stage's schedule (warm-up, cosine decay) over a run of `steps` steps."""
    from training.trainer import TrainConfig

    return TrainConfig(steps=steps, lr=s.lr, warmup=min(s.warmup, steps // 2 or 1),
                       batch_size=s.batch_size, seed=s.seed, weight_decay=0.0,
                       checkpoint_every=0)


@dataclass
class ChatSlice:
    """Some tasks' training conversations, tokenized: what one client holds."""

    tasks: list[str]
    enc: Any
    pad: int
    lengths: np.ndarray = field(init=False)  # tokens per conversation (Encoded.lengths)

    def __post_init__(self) -> None:
        self.lengths = self.enc.lengths()

    def __len__(self) -> int:
        return len(self.enc.input_ids)

    def batch(self, idx: np.ndarray) -> dict:
        from training.chatdata import pad_batch

        return pad_batch(self.enc, idx, self.pad)


def load_slice(tok, tasks: list[str], s: LoraSettings) -> ChatSlice:
    from training.chatdata import BUILTIN, encode_rows, load_rows

    rows = load_rows(BUILTIN, "train", taught=tasks, seed=s.seed)
    enc = encode_rows(tok, rows, s.max_len, "skip")
    return ChatSlice(tasks, enc, tok.pad_token_id)


def evaluate(model, tok, s: LoraSettings) -> dict:
    """Greedy exact match on the held-out questions of every task: {task: {accuracy, n,
    correct}} (the shape of training.evaluate's "tasks")."""
    from training import tasks as T
    from training.generate import answer

    held = [ex for ex in T.held_out_examples(s.per_task, s.seed) if ex.task in s.tasks]
    replies = answer(model, tok, [ex.question for ex in held], max_new_tokens=32)
    out = {}
    for task in [t for t in TASK_ORDER if t in s.tasks]:
        got = [ex.correct(r[0].text) for ex, r in zip(held, replies) if ex.task == task]
        out[task] = {"accuracy": round(sum(got) / max(1, len(got)), 4), "n": len(got),
                     "correct": int(sum(got))}
    return out


class LoraTrainer:
    """One client, built inside its ClientApp's process: the base model, its adapter and its
    slice of the chat data live there; `fit` returns the adapter's arrays and two numbers.

    Round r runs steps (r-1)*S .. r*S-1 of the fine-tune stage's loop over R*S steps (its
    batches, learning-rate schedule and gradient clipping) from a fresh AdamW: a client keeps
    no state between rounds."""

    def __init__(self, settings: dict, partition: int, num_partitions: int):
        import torch

        torch.set_num_threads(1)
        self.s = LoraSettings(**settings)
        self.model, tok = load_lora_model(self.s)
        self.data = load_slice(tok, self.s.slices()[partition], self.s)

    def fit(self, arrays, rnd: int, config: dict):
        from training.trainer import train_window

        set_adapter(self.model, arrays)
        S = self.s.local_steps
        losses = train_window(self.model, self.data.batch, len(self.data),
                              train_config(self.s, self.s.rounds * S),
                              range((rnd - 1) * S, rnd * S), self.data.lengths,
                              placement=self.s.placement())
        n = len(self.data) if self.s.weighting == "examples" else 1
        return adapter_arrays(self.model), n, {"loss": float(np.mean(losses))}


def make_trainer(settings: dict, partition: int, num_partitions: int) -> LoraTrainer:
    return LoraTrainer(settings, partition, num_partitions)


# ---------------------------------------------------------------- the three runs


def run_federated(s: LoraSettings, faults=None, checkpoint: Path | None = None,
                  resume: bool = False, on_round=None, num_cpus: int = 2, inspect=None) -> dict:
    """Flower's FedAvg over the clients' adapters; returns the engine's rounds, the final
    adapter, and its evaluation."""
    import torch

    from training.federated import engine

    model, tok = load_lora_model(s)
    plan = engine.Plan(initial=adapter_arrays(model), clients=s.clients, rounds=s.rounds,
                       noise=s.noise, clip=s.clip, seed=s.seed, checkpoint=checkpoint,
                       resume=resume, settings=asdict(s), on_round=on_round, inspect=inspect)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are the clients' while they train
    try:
        # on a GPU every client process asks Ray for an equal share of it (Ray hides the GPUs
        # from a process that asked for none)
        gpus = 1.0 / s.clients if s.placement().device.type == "cuda" else 0.0
        result = engine.simulate(functools.partial(make_trainer, asdict(s)), plan, faults,
                                 num_cpus=num_cpus, key=json.dumps(asdict(s), sort_keys=True),
                                 num_gpus=gpus)
    finally:
        torch.set_num_threads(threads)
    set_adapter(model, result["arrays"])
    result["tasks"] = evaluate(model, tok, s)
    result["adapter_bytes"] = sum(a.nbytes for a in result["arrays"].values())
    result["full_weight_bytes"] = full_weight_bytes(model)
    return result


def run_local(s: LoraSettings, tasks: list[str], steps: int, desc: str) -> dict:
    """One adapter trained in this process on `tasks`' conversations for `steps` steps by the
    fine-tune stage's loop (one AdamW, the same schedule and batches a client's rounds walk
    through), then evaluated like the federated one."""
    from training.trainer import train

    model, tok = load_lora_model(s)
    data = load_slice(tok, tasks, s)
    result = train(model, data.batch, len(data), train_config(s, steps), None, desc=desc,
                   lengths=data.lengths, placement=s.placement())
    return {"data": tasks, "steps": steps,
            "train_loss": round(float(np.mean([x for _, x in result.history[-10:]])), 4),
            "seconds": round(result.seconds, 1), "tasks": evaluate(model, tok, s)}


def run_centralized(s: LoraSettings) -> dict:
    """One adapter on the pooled slices with the federation's total compute: clients x R x S
    steps of the same batch size."""
    order = [t for t in TASK_ORDER if t in s.tasks]
    return run_local(s, order, s.clients * s.rounds * s.local_steps, "centralized")


def run_clients_alone(s: LoraSettings) -> list[dict]:
    """Each client on its own slice with the compute it spent in the federation (R x S steps,
    the very batches it trained on there)."""
    return [run_local(s, tasks, s.rounds * s.local_steps, f"client {k} alone")
            for k, tasks in enumerate(s.slices())]
