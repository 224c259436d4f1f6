"""FedAvg from first principles: private shards, local training, weighted averaging, DP-FedAvg.

One round of federated averaging (McMahan et al. 2017, "Communication-efficient learning of deep
networks from decentralized data"):

  1. the server sends the global weights w to every client (the download);
  2. each client trains a copy on its own shard for a few local epochs and sends back its new
     weights w_k and its number of examples n_k (the upload) — never an example;
  3. the server sets w <- sum_k n_k w_k / sum_k n_k.

DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models"):
each client clips its update d_k = w_k - w to L2 norm C before sending it; the server averages
the clipped updates with equal weights over the n clients it asked, adds Gaussian noise of
standard deviation z*C/n (z: the noise multiplier) and applies the result. `epsilon` below says
what privacy that buys, under which assumptions.

The clients are simulated in this process, but they are walled off as real ones would be: a
`Client` keeps its shard in private attributes, and the server loop (`run`) only ever handles
what `Client.train` returns, an `Update` of arrays and a count. The digits MLP, its training step
and its augmentation are scratch/nn's (`python -m scratch.nn --task digits-mlp`).

Randomness is a pure function of (seed, round, client): a run resumed from round k's checkpoint
ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scratch import helpers
from scratch.nn import functional as F
from scratch.nn.data import DataLoader, load_digits
from scratch.nn.modules import Dropout, Module
from scratch.nn.optim import AdamW, cosine_lr
from scratch.nn.tensor import Tensor
from scratch.nn.train import accuracy, mlp, shift_images

SPLITS = ("iid", "dirichlet")
HIDDEN = (1024, 512)  # the digits MLP of scratch.nn
DROPOUT = 0.4
SHIFT = 0.3  # share of training images moved by one pixel when drawn (scratch.nn's default)


@dataclass
class Settings:
    clients: int = 10
    split: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration (split=dirichlet): small = each client few labels
    rounds: int = 30
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    clip: float | None = None  # L2 norm each client's update is clipped to (None: no clipping)
    noise: float = 0.0  # noise multiplier z: Gaussian noise z*clip/n on the averaged update
    delta: float = 1e-5  # the delta at which epsilon is reported

    def check(self) -> None:
        if self.clients < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("clients, rounds, local-epochs and batch-size must be >= 1")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a number > 0, got {self.alpha}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a number > 0, got {self.lr}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a number >= 0, got {self.noise}")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a number > 0, got {self.clip}")
        if self.noise > 0 and self.clip is None:
            raise ValueError("noise needs a clipping norm: give --clip C as well")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


# ---------------------------------------------------------------- data: who holds what


def split_iid(labels: np.ndarray, clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of each client's shard: a random permutation cut into near-equal parts."""
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), clients)]


def split_dirichlet(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator,
                    min_size: int = 2, tries: int = 100) -> list[np.ndarray]:
    """Non-IID shards (Hsu et al. 2019): for every label, its examples are dealt to the clients
    in proportions drawn from Dirichlet(alpha, ..., alpha). alpha -> 0: each label lives on one
    client; alpha -> infinity: every client gets every label in equal measure. Draws again
    (up to `tries` times) until every client holds at least `min_size` examples, so no client
    is left with nothing to train on."""
    for _ in range(tries):
        shards: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            share = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
            for k, part in enumerate(np.split(members, cuts)):
                shards[k].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shards]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(f"no Dirichlet(alpha={alpha}) split of {len(labels)} examples gives each of "
                     f"{clients} clients {min_size}+ examples; use fewer clients or a larger alpha")


def split(labels: np.ndarray, s: Settings) -> list[np.ndarray]:
    rng = np.random.default_rng([s.seed, 7])  # the split depends on the seed only
    if s.split == "iid":
        return split_iid(labels, s.clients, rng)
    return split_dirichlet(labels, s.clients, s.alpha, rng)


@dataclass
class Digits:
    """scikit-learn's digits, standardised with training statistics (as scratch.nn does)."""

    x_train: np.ndarray  # raw pixels in [0, 1]: shifted before standardising
    y_train: np.ndarray
    x_test: np.ndarray  # standardised
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def load(cls) -> Digits:
        x_train, y_train, x_test, y_test = load_digits()
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 0.1
        return cls(x_train, y_train, (x_test - mean) / std, y_test, mean, std)

    def augment(self, xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        moved = rng.random(len(xb)) < SHIFT
        xb = xb.copy()
        xb[moved] = shift_images(xb[moved], rng)
        return ((xb - self.mean) / self.std).astype(np.float32)


# ---------------------------------------------------------------- the model and its weights

Weights = dict[str, np.ndarray]


def new_model(seed: int) -> Module:
    return mlp(64, np.random.default_rng([seed, 1]), hidden=HIDDEN, dropout=DROPOUT)


def get_weights(model: Module) -> Weights:
    return {name: p.data.copy() for name, p in model.named_parameters()}


def num_bytes(weights: Weights) -> int:
    """What sending these arrays costs: their raw bytes (float32: 4 per weight)."""
    return sum(int(a.nbytes) for a in weights.values())


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))


def reseed_dropout(model: Module, rng: np.random.Generator) -> None:
    def visit(m: Module) -> None:
        if isinstance(m, Dropout):
            m.rng = rng
        for _, child in m.children():
            visit(child)

    visit(model)


def train_local(model: Module, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
                lr: float | Callable[[int], float], rng: np.random.Generator,
                transform: Callable | None = None) -> float:
    """AdamW (fresh state) for `epochs` passes over (x, y); lr is a number or a function of the
    step. Returns the mean training loss."""
    reseed_dropout(model, rng)
    model.train()
    loader = DataLoader(x, y, batch_size, shuffle=True, rng=rng)
    optimizer = AdamW(model.parameters(), lr=lr if not callable(lr) else lr(0),
                      weight_decay=0.01)
    losses, step = [], 0
    for _ in range(epochs):
        for xb, yb in loader:
            if transform is not None:
                xb = transform(xb, rng)
            if callable(lr):
                optimizer.lr = lr(step)
            loss = F.cross_entropy(model(Tensor(xb)), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
    return float(np.mean(losses)) if losses else float("nan")


# ---------------------------------------------------------------- clients


@dataclass
class Update:
    """All that a client sends: arrays and two numbers. Never an example."""

    weights: Weights
    num_examples: int
    loss: float


class ClientFailure(RuntimeError):
    """An injected crash (see Client.fail_rounds)."""


class Client:
    """A data holder. Its shard stays in `_x`/`_y`; `train` is the only way in or out."""

    def __init__(self, cid: int, x: np.ndarray, y: np.ndarray, data: Digits, s: Settings,
                 fail_rounds: set[int] = frozenset(), nan_rounds: set[int] = frozenset()):
        self.cid = cid
        self._x, self._y, self._data, self._s = x, y, data, s
        self.fail_rounds, self.nan_rounds = set(fail_rounds), set(nan_rounds)
        self._model = new_model(s.seed)  # the client's own copy; overwritten every round

    @property
    def num_examples(self) -> int:
        return len(self._y)

    def train(self, weights: Weights, rnd: int, lr: float) -> Update:
        """Local training from the global `weights` in round `rnd` (1-based)."""
        if rnd in self.fail_rounds:
            raise ClientFailure(f"client {self.cid} crashed (injected) in round {rnd}")
        s = self._s
        self._model.load_state_dict(weights)
        rng = np.random.default_rng([s.seed, rnd, self.cid])
        loss = train_local(self._model, self._x, self._y, s.local_epochs, s.batch_size, lr, rng,
                           self._data.augment)
        new = get_weights(self._model)
        if s.clip is not None:  # DP-FedAvg: the update leaves the client clipped to norm C
            delta = {k: new[k] - weights[k] for k in new}
            scale = min(1.0, s.clip / max(global_norm(list(delta.values())), 1e-12))
            new = {k: (weights[k] + scale * delta[k]).astype(np.float32) for k in new}
        if rnd in self.nan_rounds:  # an injected fault: a diverged client
            new = {k: np.full_like(v, np.nan) for k, v in new.items()}
        return Update(new, self.num_examples, loss)


def make_clients(s: Settings, data: Digits | None = None,
                 faults: dict[str, dict[int, set[int]]] | None = None) -> list[Client]:
    """The clients of a run, each with its shard. faults: {"crash"|"nan": {client: {rounds}}}."""
    data = data or Digits.load()
    faults = faults or {}
    return [Client(k, data.x_train[idx], data.y_train[idx], data, s,
                   faults.get("crash", {}).get(k, set()), faults.get("nan", {}).get(k, set()))
            for k, idx in enumerate(split(data.y_train, s))]


# ---------------------------------------------------------------- the server


def fedavg(updates: Sequence[tuple[Weights, float]]) -> Weights:
    """The weighted mean of the clients' weights: sum_k n_k w_k / sum_k n_k (in float64, then
    back to float32, as Flower's aggregate_arrayrecords does)."""
    total = float(sum(n for _, n in updates))
    names = updates[0][0].keys()
    return {name: (sum(w[name].astype(np.float64) * (n / total) for w, n in updates))
            .astype(np.float32) for name in names}


def dp_average(global_w: Weights, updates: Sequence[Weights], sampled: int, clip: float,
               noise: float, rng: np.random.Generator) -> Weights:
    """DP-FedAvg's server step: the mean of the (already clipped) updates over all `sampled`
    clients (a client that dropped out counts as a zero update: the denominator is fixed, so
    one client's presence moves the mean by at most clip/sampled), plus N(0, (noise*clip/
    sampled)^2) on every weight."""
    std = noise * clip / sampled
    out = {}
    for name, w in global_w.items():
        total = sum(u[name].astype(np.float64) - w for u in updates)
        mean = total / sampled if updates else np.zeros_like(w, dtype=np.float64)
        out[name] = (w + mean + rng.normal(0.0, std, w.shape) * (std > 0)).astype(np.float32)
    return out


def epsilon(noise: float, rounds: int, delta: float) -> float:
    """Client-level (epsilon, delta) of `rounds` releases of the Gaussian mechanism with noise
    multiplier `noise` (std = noise x sensitivity), every client taking part in every round
    (no amplification by sampling), neighbouring datasets differing by one client's data.

    Renyi DP (Mironov 2017): one release is (a, a/(2 z^2))-RDP for every order a > 1; `rounds`
    of them compose to a*rho with rho = rounds/(2 z^2); the conversion eps = rdp(a) +
    log(1/delta)/(a-1), minimised over a, gives eps = rho + 2*sqrt(rho*log(1/delta)).
    What it does not cover is in docs/federated.md."""
    if noise <= 0:
        return math.inf
    rho = rounds / (2 * noise**2)
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


def evaluate(model: Module, data: Digits) -> float:
    return accuracy(model, data.x_test, data.y_test)


@dataclass
class RoundRecord:
    round: int
    accuracy: float
    bytes: int  # down (global weights to each client asked) + up (each reply received)
    bytes_down: int
    bytes_up: int
    clients: int  # whose update was averaged
    dropped: list[dict] = field(default_factory=list)  # [{"client", "reason"}]
    train_loss: float | None = None
    seconds: float = 0.0


def checkpoint_save(path: Path, weights: Weights, state: dict) -> None:
    """One file (atomic): the global weights and the run's records so far."""
    blob = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    helpers.save_npz(path, **{f"w:{k}": v for k, v in weights.items()}, state=blob)


def checkpoint_load(path: Path) -> tuple[Weights, dict]:
    with np.load(path, allow_pickle=False) as z:
        weights = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
        state = json.loads(bytes(z["state"]).decode())
    return weights, state


def run(s: Settings, clients: list[Client] | None = None, data: Digits | None = None,
        checkpoint: Path | None = None, resume: bool = False, stop_after: int | None = None,
        on_round: Callable[[RoundRecord], None] | None = None) -> dict:
    """FedAvg for s.rounds rounds. Returns {"rounds": [RoundRecord as dict], "weights": ...}.

    checkpoint: saved after every finished round; with resume, the run continues after the
    last round saved there (its settings must match). stop_after: end after that many rounds
    (a stand-in for an interrupted run, for tests)."""
    import time

    s.check()
    data = data or Digits.load()
    clients = clients if clients is not None else make_clients(s, data)
    model = new_model(s.seed)
    weights = get_weights(model)
    records: list[dict] = []
    settings = asdict(s)
    if resume and checkpoint is not None and checkpoint.exists():
        weights, state = checkpoint_load(checkpoint)
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise ValueError(f"--resume with other settings than {checkpoint}'s "
                             f"({', '.join(changed)}); delete it to start over")
        records = state["rounds"]
    dp = s.noise > 0
    size = num_bytes(weights)
    for rnd in range(len(records) + 1, s.rounds + 1):
        if stop_after is not None and rnd > stop_after:
            break
        start = time.perf_counter()
        lr = cosine_lr(rnd - 1, s.rounds, s.lr, warmup=min(2, s.rounds // 4))
        received: list[Update] = []
        dropped: list[dict] = []
        for client in clients:
            try:
                update = client.train(weights, rnd, lr)
            except Exception as err:  # a crashed client: it sent nothing this round
                dropped.append({"client": client.cid, "reason": f"crashed: {err}"})
                continue
            received.append(update)
            if not all(np.isfinite(a).all() for a in update.weights.values()):
                dropped.append({"client": client.cid, "reason": "non-finite weights"})
        good = [u for u in received
                if all(np.isfinite(a).all() for a in u.weights.values())]
        for d in dropped:
            warnings.warn(f"round {rnd}: client {d['client']} dropped ({d['reason']})",
                          stacklevel=2)
        if dp:
            weights = dp_average(weights, [u.weights for u in good], len(clients), s.clip,
                                 s.noise, np.random.default_rng([s.seed, rnd, 10**6]))
        elif good:
            weights = fedavg([(u.weights, u.num_examples) for u in good])
        model.load_state_dict(weights)
        rec = RoundRecord(
            round=rnd, accuracy=evaluate(model, data),
            bytes=size * (len(clients) + len(received)), bytes_down=size * len(clients),
            bytes_up=size * len(received), clients=len(good), dropped=dropped,
            train_loss=(float(np.mean([u.loss for u in good])) if good else None),
            seconds=round(time.perf_counter() - start, 3))
        records.append(asdict(rec))
        if checkpoint is not None:
            checkpoint_save(checkpoint, weights, {"settings": settings, "rounds": records})
        if on_round is not None:
            on_round(rec)
    return {"rounds": records, "weights": weights}


def run_centralized(s: Settings, data: Digits | None = None) -> dict:
    """The reference: one model on all the training data with the same total compute as the
    federated run (rounds x local_epochs passes over all of it, the same batch size, AdamW with a
    cosine schedule, the same augmentation)."""
    import time

    data = data or Digits.load()
    model = new_model(s.seed)
    epochs = s.rounds * s.local_epochs
    steps = epochs * -(-len(data.y_train) // s.batch_size)
    start = time.perf_counter()
    loss = train_local(model, data.x_train, data.y_train, epochs, s.batch_size,
                       lambda step: cosine_lr(step, steps, s.lr, warmup=steps // (2 * epochs)),
                       np.random.default_rng([s.seed, 0, 10**6 + 1]), data.augment)
    return {"accuracy": evaluate(model, data), "epochs": epochs, "train_loss": loss,
            "seconds": round(time.perf_counter() - start, 3)}
