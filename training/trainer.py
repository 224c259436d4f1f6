"""One training loop for pretraining and fine-tuning: AdamW, warm-up + cosine schedule, gradient
clipping, safetensors checkpoints that resume exactly, and data-parallel runs under
`torchrun` / `accelerate launch` (NCCL with one GPU per rank, gloo on the CPU), on any device and
precision `serving.device` resolves (autocast over float32 weights; checkpoints are float32 on the
CPU, so a run resumes on another device).

Batches are a pure function of (seed, step): resuming at step k sees exactly the batches an
uninterrupted run would have seen, so the final weights are the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from serving.device import CPU, Placement, to_device
from serving.helpers import AtomicDir, UsageError, atomic_write_json
from training.stage import RESUMABLE_CHANGES


@dataclass
class TrainConfig:
    steps: int
    lr: float
    warmup: int
    batch_size: int  # global: split across data-parallel ranks
    seed: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10


@dataclass
class TrainResult:
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    seconds: float = 0.0
    tokens: int = 0  # tokens the model read, all ranks
    resumed_from: int = 0
    rank_checksums: list[str] = field(default_factory=list)  # sha256 of each rank's weights


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def epoch_sampler(n_items: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Indices of the global batch at `step`: each epoch visits every item once, in an order
    fixed by (seed, epoch)."""
    flat = np.arange(step * batch, (step + 1) * batch)
    epochs, pos = np.divmod(flat, n_items)
    out = np.empty(batch, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n_items)
        out[epochs == e] = perm[pos[epochs == e]]
    return out


def split_by_length(idx: np.ndarray, lengths: np.ndarray, pass_cost: int = 256) -> list[np.ndarray]:
    """Cut one batch into (at most) two micro-batches, short items and long items, when that
    pads fewer tokens: a batch of 3-token sums with a few 50-token definitions would otherwise
    pad every row to 50. `pass_cost` is what an extra forward pass costs, in tokens."""
    order = idx[np.argsort(lengths[idx], kind="stable")]
    sorted_len = lengths[order]
    n = len(order)
    best_k, best_cost = n, n * int(sorted_len[-1])
    for k in range(1, n):
        cost = k * int(sorted_len[k - 1]) + (n - k) * int(sorted_len[-1]) + pass_cost
        if cost < best_cost:
            best_k, best_cost = k, cost
    return [order] if best_k == n else [order[:best_k], order[best_k:]]


def _label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a loss (causal LMs predict labels[1:] from inputs[:-1])."""
    return int((batch["labels"][:, 1:] != -100).sum())


class LabelledLoss(torch.nn.Module):
    """A causal LM's mean next-token loss over the labelled positions, with the output layer
    computed only there.

    A chat fine-tune labels only the answers — a few tokens in a conversation of a hundred —
    but the model's own loss computes logits for every position: with SmolLM2's 49,152-word
    vocabulary that is a [batch, tokens, 49152] float tensor and its gradient, most of a
    step's memory traffic. Same loss, same gradients, a fraction of the work. Models without
    the usual `model` + `lm_head` layout fall back to their own loss.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        body, head = getattr(base, "model", None), getattr(base, "lm_head", None)
        self.split = (body, head) if body is not None and head is not None else None

    def forward(self, input_ids, labels, attention_mask=None) -> torch.Tensor:
        if self.split is None:
            return self.model(input_ids=input_ids, labels=labels,
                              attention_mask=attention_mask).loss
        body, head = self.split
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        logits = head(hidden[:, :-1][keep])
        return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def backward_in_parts(net: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
                      world: int = 1, placement: Placement = CPU,
                      scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Backpropagate one batch given as micro-batches; returns the batch's mean loss.

    The model's loss is a mean over one micro-batch's loss tokens; weighting each by its share
    of all loss tokens makes the gradients add up to those of the whole batch at once. The
    forward pass runs under the placement's autocast, the backward pass outside it (as torch
    recommends), through `scaler` when float16 needs one.
    """
    counts = [_label_tokens(b) for b in batches] if len(batches) > 1 else [1]
    total = torch.zeros((), device=placement.device)
    for i, (b, count) in enumerate(zip(batches, counts)):
        # data-parallel: average gradients across processes once, after the last part
        sync = nullcontext() if world == 1 or i == len(batches) - 1 else net.no_sync()
        with sync:
            with placement.autocast():
                part = net(**b) * (count / sum(counts)) if len(batches) > 1 else net(**b)
            (scaler.scale(part) if scaler is not None else part).backward()
        total += part.detach().float()
    return total


def distributed(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world_size); joins the process group when launched by torchrun/accelerate: NCCL
    when each rank has a GPU (its LOCAL_RANK's), gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        on_gpu = device is not None and device.type == "cuda"
        if on_gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_run(out: Path, seed: int, placement: Placement = CPU) -> tuple[int, int]:
    """Common start of a training stage: check the output path, join the process group when
    launched by torchrun/accelerate, seed everything, share the cores among processes, and say
    where the run goes (device and precision)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    rank, world = distributed(placement.device)
    if rank == 0:
        print(f"running on {placement.describe()}", flush=True)
    set_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    return rank, world


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_finite(model: torch.nn.Module, step: int, ckpt: Path | None) -> None:
    """Stop with one line when training diverged, before anything is saved from it."""
    bad = [n for n, p in _trainable(model).items() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise Diverged(step, f"{len(bad)} weight tensor(s) are not finite (first: {bad[0]})", ckpt)


class Diverged(UsageError):
    def __init__(self, step: int, what: str, ckpt: Path | None):
        kept = (f"the last good checkpoint is kept in {ckpt}"
                if ckpt is not None and (ckpt / "state.json").exists() else "nothing was saved")
        super().__init__(f"training diverged at step {step}: {what}; {kept}. Lower the learning "
                         "rate (--lr) and start again")


def save_checkpoint(ckpt: Path, model, opt, step: int, result: TrainResult,
                    save_extra: Callable[[Path], None] | None = None,
                    settings: dict | None = None) -> None:
    check_finite(model, step, ckpt)
    params = _trainable(model)
    tensors, opt_tensors = {}, {}
    for name, p in params.items():  # float32 on the CPU: the file names no device
        tensors[name] = p.detach().to("cpu", torch.float32).contiguous()
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                opt_tensors[f"{name}::{key}"] = (torch.as_tensor(state[key]).reshape(-1)
                                                 .to("cpu", torch.float32).clone())
    with AtomicDir(ckpt) as tmp:
        save_file(tensors, tmp / "trainable.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        atomic_write_json(
            tmp / "state.json",
            {"step": step, "history": result.history, "tokens": result.tokens,
             "seconds": result.seconds, "settings": settings or {}},
        )
        if save_extra is not None:  # e.g. the tokenizer, so a resumed run reuses its ids
            save_extra(tmp)


def check_resume(ckpt: Path, settings: dict) -> None:
    """A checkpoint continues only the run that made it: other settings would publish its
    weights under metrics and a card that do not describe them."""
    try:
        saved = json.loads((ckpt / "state.json").read_text()).get("settings", {})
    except (OSError, ValueError) as err:
        raise UsageError(f"{ckpt}/state.json is unreadable ({err}); delete {ckpt} and start "
                         "again without --resume") from None
    settings = json.loads(json.dumps(settings))  # compare as stored: tuples are lists there
    changed = sorted(k for k in set(saved) | set(settings) if k not in RESUMABLE_CHANGES
                     and saved.get(k) != settings.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} → {settings.get(k)!r}" for k in changed)
        raise UsageError(f"--resume with other settings than the checkpoint's ({diff}); run again "
                         f"with the checkpoint's settings, or delete {ckpt} to start over")


def load_checkpoint(ckpt: Path, model, opt, result: TrainResult) -> int:
    params = _trainable(model)
    tensors = load_file(ckpt / "trainable.safetensors")
    opt_tensors = load_file(ckpt / "optimizer.safetensors")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
            if f"{name}::step" in opt_tensors:  # moments beside their parameter; step on CPU
                opt.state[p] = {
                    "step": opt_tensors[f"{name}::step"].reshape(()),
                    "exp_avg": opt_tensors[f"{name}::exp_avg"].reshape(p.shape).to(p.device),
                    "exp_avg_sq": opt_tensors[f"{name}::exp_avg_sq"].reshape(p.shape)
                    .to(p.device),
                }
    state = json.loads((ckpt / "state.json").read_text())
    result.history = [tuple(h) for h in state["history"]]
    result.tokens = state["tokens"]
    result.seconds = state["seconds"]
    return int(state["step"])


def make_optimizer(params: dict[str, torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay = [p for p in params.values() if p.ndim >= 2]
    no_decay = [p for p in params.values() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), foreach=True,
    )


def take_step(net: torch.nn.Module, opt: torch.optim.Optimizer,
              get_batch: Callable[[np.ndarray], dict[str, torch.Tensor]], n_items: int,
              cfg: TrainConfig, step: int, lengths: np.ndarray | None = None, rank: int = 0,
              world: int = 1, placement: Placement = CPU,
              scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, int]:
    """Step `step` of the run `cfg` describes: this process's share of the step's batch (as
    short and long micro-batches when `lengths` is given) on the placement's device, the step's
    learning rate, gradients clipped to cfg.grad_clip. Returns the batch's mean loss and the
    tokens this process read. A non-finite loss leaves the weights as they were (the caller
    decides what to do)."""
    local = cfg.batch_size // world
    idx = epoch_sampler(n_items, cfg.batch_size, cfg.seed, step)[rank * local:(rank + 1) * local]
    parts = [idx] if lengths is None else split_by_length(idx, lengths)
    batches = [to_device(get_batch(part), placement.device) for part in parts]
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss = backward_in_parts(net, batches, world, placement, scaler)
    if math.isfinite(float(loss)):
        params = [p for group in opt.param_groups for p in group["params"]]
        clip_and_step(opt, params, cfg.grad_clip, scaler)
    return loss, sum(int(b["attention_mask"].sum()) for b in batches)


def clip_and_step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], grad_clip: float,
                  scaler: torch.amp.GradScaler | None = None) -> None:
    """Clip the gradients' norm to grad_clip and step; with float16's gradient scaler, the
    gradients are unscaled first (so the clip sees their true size) and the scaler steps."""
    if scaler is not None:
        scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def train_window(model: torch.nn.Module,
                 get_batch: Callable[[np.ndarray], dict[str, torch.Tensor]], n_items: int,
                 cfg: TrainConfig, steps: range, lengths: np.ndarray | None = None,
                 placement: Placement = CPU) -> list[float]:
    """Steps `steps` of the run `cfg` describes — the same batches and learning rates `train`
    gives those steps — from a fresh optimizer, with no checkpoint and no progress bar: one
    round of a federated client, which keeps no state between rounds. Returns the losses; a
    non-finite one raises FloatingPointError."""
    model.to(placement.device)
    params = _trainable(model)
    opt = make_optimizer(params, cfg)
    scaler = placement.grad_scaler()
    net = LabelledLoss(model)
    model.train()
    losses = []
    for step in steps:
        loss = float(take_step(net, opt, get_batch, n_items, cfg, step, lengths,
                               placement=placement, scaler=scaler)[0])
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {step}")
        losses.append(loss)
    model.eval()
    return losses


def train(
    model: torch.nn.Module,
    get_batch: Callable[[np.ndarray], dict[str, torch.Tensor]],
    n_items: int,
    cfg: TrainConfig,
    checkpoint_dir: Path | None,
    resume: bool = False,
    desc: str = "train",
    save_extra: Callable[[Path], None] | None = None,
    lengths: np.ndarray | None = None,
    settings: dict | None = None,
    on_step: Callable[[int], None] | None = None,
    placement: Placement = CPU,
) -> TrainResult:
    """Train `model` in place. `get_batch(indices)` turns item indices into model inputs;
    `save_extra(folder)` adds files of the caller's to every checkpoint. With `lengths`
    (tokens per item), each batch runs as short and long micro-batches whose losses are
    weighted by their loss tokens: the same gradient as the whole batch, with less padding.
    `settings` (the stage's) are stored in every checkpoint; a resume with others is refused.
    `on_step(steps_done)` runs after every step (rank 0; e.g. an evaluation), off the clock.
    With `checkpoint_dir` None nothing is saved (a baseline that is not kept). A non-finite
    loss or weight stops the run with one line, keeping the last good checkpoint. The model
    trains on `placement`'s device (it stays there afterwards)."""
    rank, world = distributed(placement.device)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by {world} processes")
    torch.manual_seed(cfg.seed)
    model.to(placement.device)
    params = _trainable(model)
    opt = make_optimizer(params, cfg)
    scaler = placement.grad_scaler()
    result = TrainResult()
    start = 0
    if resume and checkpoint_dir is not None and (checkpoint_dir / "state.json").exists():
        check_resume(checkpoint_dir, settings or {})
        start = load_checkpoint(checkpoint_dir, model, opt, result)
        result.resumed_from = start
    net = LabelledLoss(model)
    if world > 1:
        ids = [placement.device.index] if placement.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    model.train()
    t0 = time.perf_counter() - result.seconds
    bar = tqdm(range(start, cfg.steps), desc=desc, disable=rank != 0, initial=start,
               total=cfg.steps, dynamic_ncols=True)
    for step in bar:
        loss, tokens = take_step(net, opt, get_batch, n_items, cfg, step, lengths, rank, world,
                                 placement, scaler)
        if not math.isfinite(float(loss)):
            raise Diverged(step, f"the loss is {float(loss)}", checkpoint_dir)
        result.tokens += tokens * world
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            value = loss.detach()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            result.history.append((step, round(float(value), 5)))
            bar.set_postfix(loss=f"{float(value):.3f}", lr=f"{lr_at(step, cfg):.1e}")
        done = step + 1
        if on_step is not None and rank == 0:
            paused = time.perf_counter()
            on_step(done)
            model.train()
            t0 += time.perf_counter() - paused  # measuring is not training time
        if (checkpoint_dir is not None and cfg.checkpoint_every
                and done % cfg.checkpoint_every == 0 and done < cfg.steps):
            result.seconds = time.perf_counter() - t0
            if rank == 0:
                save_checkpoint(checkpoint_dir, model, opt, done, result, save_extra, settings)
            if world > 1:
                dist.barrier()
    result.seconds = time.perf_counter() - t0
    check_finite(model, cfg.steps, checkpoint_dir)
    result.rank_checksums = gather_checksums(model, world)
    model.eval()
    return result


def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_checksums(model: torch.nn.Module, world: int) -> list[str]:
    """Each rank's checksum, so a data-parallel run can show its replicas stayed identical."""
    mine = weights_checksum(model)
    if world == 1:
        return [mine]
    every: list[str] = [""] * world
    dist.all_gather_object(every, mine)
    return every
