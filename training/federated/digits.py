"""python -m training.federated.digits --clients 10 --split iid|dirichlet --alpha A --rounds R
    [--noise Z --clip C] --json OUT

The digits experiment of `python -m scratch.federated` with the real tools: a PyTorch MLP of
the same shape (64-1024-512-10, dropout 0.4, the same one-pixel-shift augmentation), the same
shards (the same stratified split and Dirichlet draw), trained by Flower's FedAvg on its
simulation engine, optionally inside Flower's client-side fixed-clipping DP wrapper. The JSON
has the same keys as scratch's: rounds [{round, accuracy, bytes, ...}], final_accuracy,
centralized_accuracy.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serving.helpers import (
    ArgumentParser,
    UsageError,
    atomic_write_json,
    cli_main,
    require_writable_file,
    show_warnings_as_lines,
)

PROG = "python -m training.federated.digits"


@dataclass
class DigitsSettings:
    clients: int = 10
    split: str = "iid"
    alpha: float = 0.5
    rounds: int = 30
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    clip: float = 3.0  # used when noise > 0
    noise: float = 0.0


# ---------------------------------------------------------------- data (as scratch.nn's)


def load_digits_split(test_fraction: float = 0.2, split_seed: int = 0):
    """scikit-learn's digits as 64 values in [0, 1], the fixed stratified split scratch.nn uses
    (training.images.digits_split, flattened and scaled: dividing by 16 is exact)."""
    from training.images import digits_split

    x_train, y_train, x_test, y_test = digits_split(test_fraction, split_seed)
    return (x_train.reshape(len(x_train), -1) / 16.0, y_train,
            x_test.reshape(len(x_test), -1) / 16.0, y_test)


def shards(labels: np.ndarray, s: DigitsSettings, min_size: int = 2) -> list[np.ndarray]:
    """Each client's indices: IID parts, or per label a Dirichlet(alpha) share for each client
    (the same draws as scratch.federated's split for the same seed)."""
    rng = np.random.default_rng([s.seed, 7])
    if s.split == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), s.clients)]
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(s.clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            share = rng.dirichlet(np.full(s.clients, s.alpha))
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
            for k, part in enumerate(np.split(members, cuts)):
                parts[k].append(part)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise UsageError(f"no Dirichlet(alpha={s.alpha}) split gives each of {s.clients} clients "
                     f"{min_size}+ examples; use fewer clients or a larger alpha")


def shift_images(images: np.ndarray, rng: np.random.Generator, side: int = 8) -> np.ndarray:
    n = len(images)
    padded = np.zeros((n, side + 2, side + 2), dtype=images.dtype)
    padded[:, 1:-1, 1:-1] = images.reshape(n, side, side)
    dy, dx = rng.integers(0, 3, n), rng.integers(0, 3, n)
    rows = (dy[:, None] + np.arange(side))[:, :, None]
    cols = (dx[:, None] + np.arange(side))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols].reshape(n, side * side)


class Data:
    def __init__(self):
        self.x_train, self.y_train, x_test, self.y_test = load_digits_split()
        self.mean = self.x_train.mean(axis=0)
        self.std = self.x_train.std(axis=0) + 0.1
        self.x_test = ((x_test - self.mean) / self.std).astype(np.float32)

    def augment(self, xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        moved = rng.random(len(xb)) < 0.3
        xb = xb.copy()
        xb[moved] = shift_images(xb[moved], rng)
        return ((xb - self.mean) / self.std).astype(np.float32)


# ---------------------------------------------------------------- model and local training


def new_model(seed: int):
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Dropout(0.4), nn.Linear(1024, 512),
                         nn.ReLU(), nn.Dropout(0.4), nn.Linear(512, 10))


def arrays_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model, arrays: dict[str, np.ndarray]) -> None:
    import torch

    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def cosine(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_local(model, x, y, data: Data, epochs: int, batch_size: int, lr, seed) -> float:
    """AdamW (fresh state, decay on matrices only) for `epochs` passes; lr a number or a
    function of the step."""
    import torch

    torch.manual_seed(int(np.random.default_rng(seed).integers(2**31)))
    rng = np.random.default_rng(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=1.0)
    model.train()
    losses, step = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = torch.from_numpy(data.augment(x[idx], rng))
            for g in opt.param_groups:
                g["lr"] = lr(step) if callable(lr) else lr
            loss = torch.nn.functional.cross_entropy(model(xb), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            step += 1
    return float(np.mean(losses)) if losses else float("nan")


def accuracy(model, data: Data) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        hits = (model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).sum()
    return float(hits / len(data.y_test))


class DigitsTrainer:
    """One client: its shard is loaded here, in the ClientApp's process, and stays there."""

    def __init__(self, partition: int, num_partitions: int, settings: dict):
        import torch

        torch.set_num_threads(1)
        self.s = DigitsSettings(**settings)
        self.data = Data()
        idx = shards(self.data.y_train, self.s)[partition]
        self._x, self._y = self.data.x_train[idx], self.data.y_train[idx]
        self.partition = partition
        self.model = new_model(self.s.seed)

    def fit(self, arrays, rnd, config):
        load_arrays(self.model, arrays)
        loss = train_local(self.model, self._x, self._y, self.data, self.s.local_epochs,
                           self.s.batch_size, float(config["lr"]),
                           [self.s.seed, rnd, self.partition])
        # Under DP every client weighs the same (the noise is calibrated to one client's
        # clipped update over the number asked).
        n = 1 if self.s.noise > 0 else len(self._y)
        return arrays_of(self.model), n, {"loss": loss}


def make_trainer(settings: dict, partition: int, num_partitions: int) -> DigitsTrainer:
    return DigitsTrainer(partition, num_partitions, settings)


def round_lr(s: DigitsSettings, rnd: int) -> float:
    return cosine(rnd - 1, s.rounds, s.lr, warmup=min(2, s.rounds // 4))


def run_federated(s: DigitsSettings, faults=None, checkpoint: Path | None = None,
                  resume: bool = False, on_round=None, num_cpus: int = 2,
                  inspect=None) -> dict:
    """FedAvg on Flower. The per-round lr rides in the round's config, so it changes per round
    although Flower's strategy sends one config: the ServerApp sends a new one each round."""
    import functools

    import torch

    from training.federated import engine

    torch.set_num_threads(1)
    data = Data()
    model = new_model(s.seed)

    def evaluate(rnd: int, arrays) -> dict:
        load_arrays(model, arrays)
        return {"accuracy": accuracy(model, data)}

    plan = engine.Plan(initial=arrays_of(model), clients=s.clients, rounds=s.rounds,
                       config={"lr": s.lr}, noise=s.noise, clip=s.clip, seed=s.seed,
                       checkpoint=checkpoint, resume=resume, settings=asdict(s),
                       evaluate=evaluate, on_round=on_round, inspect=inspect)
    plan.config_for_round = lambda rnd: {"lr": round_lr(s, rnd)}
    factory = functools.partial(make_trainer, asdict(s))
    return engine.simulate(factory, plan, faults, num_cpus=num_cpus,
                           key=json.dumps(asdict(s), sort_keys=True))


def run_centralized(s: DigitsSettings) -> dict:
    """One model on all the data, with the federated run's total compute."""
    import torch

    torch.set_num_threads(1)
    data = Data()
    model = new_model(s.seed)
    epochs = s.rounds * s.local_epochs
    steps = epochs * -(-len(data.y_train) // s.batch_size)
    start = time.perf_counter()
    loss = train_local(model, data.x_train, data.y_train, data, epochs, s.batch_size,
                       lambda step: cosine(step, steps, s.lr, steps // (2 * epochs)),
                       [s.seed, 0, 10**6 + 1])
    return {"accuracy": accuracy(model, data), "epochs": epochs, "train_loss": loss,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> None:
    from training.federated.cli_common import add_fault_flags, faults_from, number

    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].split("\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--split", choices=("iid", "dirichlet"), default="iid")
    p.add_argument("--alpha", type=number(positive=True), default=0.5)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=number(positive=True), default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=number(), default=0.0,
                   help="noise multiplier of Flower's DifferentialPrivacyClientSideFixedClipping "
                        "(0: plain FedAvg)")
    p.add_argument("--clip", type=number(positive=True), default=3.0,
                   help="clipping norm for --noise (Flower's fixedclipping_mod on each client)")
    p.add_argument("--no-centralized", action="store_true")
    p.add_argument("--num-cpus", type=int, default=2, help="Ray's CPUs (one per client actor)")
    p.add_argument("--json", type=Path)
    p.add_argument("--checkpoint", type=Path, help="default: OUT.ckpt beside --json")
    p.add_argument("--resume", action="store_true")
    add_fault_flags(p)
    args = p.parse_args(argv)
    if min(args.clients, args.rounds, args.local_epochs, args.num_cpus) < 1 or args.seed < 0:
        raise UsageError("--clients, --rounds, --local-epochs and --num-cpus must be >= 1, "
                         "--seed >= 0")
    s = DigitsSettings(clients=args.clients, split=args.split, alpha=args.alpha,
                       rounds=args.rounds, local_epochs=args.local_epochs, lr=args.lr,
                       seed=args.seed, clip=args.clip, noise=args.noise)
    if args.json:
        require_writable_file(args.json)  # before the rounds, not after
    faults = faults_from(args, s.clients)
    ckpt = args.checkpoint or (args.json.with_name(args.json.name + ".ckpt") if args.json
                               else None)
    if args.resume and (ckpt is None or not (ckpt / "state.json").exists()):
        raise UsageError(f"--resume: no checkpoint at {ckpt or '(give --json or --checkpoint)'}"
                         "; run without --resume first")
    shards(load_digits_split()[1], s)  # a split that leaves a client nothing fails here
    show_warnings_as_lines()

    def progress(rec: dict) -> None:
        extra = f", dropped {[d['client'] for d in rec['dropped']]}" if rec["dropped"] else ""
        print(f"round {rec['round']:3d}: accuracy {rec['accuracy']:.2%}, "
              f"{rec['bytes'] / 2**20:.1f} MiB{extra}", flush=True)

    start = time.perf_counter()
    try:
        result = run_federated(s, faults, ckpt, args.resume, progress, args.num_cpus)
    except ValueError as err:
        raise UsageError(str(err)) from None
    seconds = time.perf_counter() - start
    central = None if args.no_centralized else run_centralized(s)
    rounds = result["rounds"]
    out = {"rounds": rounds, "final_accuracy": rounds[-1]["accuracy"],
           "centralized_accuracy": central["accuracy"] if central else None,
           "centralized": central, "settings": asdict(s), "engine": "flwr",
           "privacy": {"noise_multiplier": s.noise, "clip": s.clip if s.noise else None,
                       "wrapper": "DifferentialPrivacyClientSideFixedClipping" if s.noise
                       else None,
                       "epsilon": None,
                       "note": "Flower's accountant (the flwr[dp] extra) is not used: see "
                               "python -m scratch.federated's epsilon for the same noise"},
           "dropped": [{"round": r["round"], **d} for r in rounds for d in r["dropped"]],
           "federated_seconds": round(seconds, 1)}
    print(json.dumps({k: out[k] for k in ("final_accuracy", "centralized_accuracy")}))
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    cli_main(main)()
