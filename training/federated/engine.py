"""Federated averaging on Flower's simulation engine: a ServerApp running Flower's FedAvg
strategy (optionally inside its client-side fixed-clipping DP wrapper), ClientApps on Ray
actors, and what this project adds around them — dropping a client that crashed or sent
non-finite weights (with a warning, recorded in the round's record), bytes per round, a
checkpoint after every round and `resume` from the last finished one.

A client is any `Trainer`, made inside the ClientApp's own process by a picklable factory
(`factory(partition_id, num_partitions) -> Trainer`) and cached there: its data is loaded, and
stays, in that process. The server sees only what Flower's messages carry: an ArrayRecord of
weights and a MetricRecord of numbers.

Ray is kept small: `num_cpus` CPUs in all (default 2), one per ClientApp actor, so at most two
clients train at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serving.helpers import AtomicDir

Arrays = dict[str, np.ndarray]
PARTITION_KEY = "partition-id"
NUM_EXAMPLES = "num-examples"  # the key Flower's FedAvg weights the average by


class Trainer(Protocol):
    def fit(self, arrays: Arrays, rnd: int, config: dict[str, Any]
            ) -> tuple[Arrays, int, dict[str, float]]:
        """Train from the global `arrays` in round `rnd`; return (new arrays, examples seen,
        numeric metrics)."""


@dataclass
class Faults:
    """Injected faults, by client: the rounds it crashes in, the rounds it sends NaN."""

    crash: dict[int, list[int]] = field(default_factory=dict)
    nan: dict[int, list[int]] = field(default_factory=dict)


class InjectedCrash(RuntimeError):
    pass


_TRAINERS: dict[tuple[str, int], Trainer] = {}  # per ClientApp process: its clients' trainers


def cached_trainer(factory: Callable[[int, int], Trainer], key: str, pid: int,
                   num: int) -> Trainer:
    """This process's trainer for client `pid`, built once. A module-level function: Ray
    sends the ClientApp's closures by value, with a copy of every global they name, so a cache
    named in a closure would start empty for every message; this one is the module's own."""
    if (key, pid) not in _TRAINERS:
        _TRAINERS[(key, pid)] = factory(pid, num)
    return _TRAINERS[(key, pid)]


def client_app(factory: Callable[[int, int], Trainer], key: str, faults: Faults | None = None,
               dp: bool = False):
    """A Flower ClientApp whose `train` runs `factory(partition)`'s Trainer. `key` names the
    run, so a cached trainer of another run is never reused. With dp, Flower's
    `fixedclipping_mod` clips each update to the norm the server's DP wrapper sends."""
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.clientapp.mod import fixedclipping_mod

    faults = faults or Faults()
    app = ClientApp(mods=[fixedclipping_mod] if dp else [])

    def trainer(context: Context) -> tuple[int, Trainer]:
        pid = int(context.node_config[PARTITION_KEY])
        return pid, cached_trainer(factory, key, pid, int(context.node_config["num-partitions"]))

    @app.query()
    def who(msg: Message, context: Context) -> Message:
        pid = int(context.node_config[PARTITION_KEY])
        return Message(RecordDict({"metrics": MetricRecord({PARTITION_KEY: pid})}),
                       reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid, t = trainer(context)
        cfg = dict(msg.content["config"])
        rnd = int(cfg["server-round"])
        if rnd in faults.crash.get(pid, []):
            raise InjectedCrash(f"client {pid} crashed (injected) in round {rnd}")
        record = msg.content["arrays"]
        arrays = dict(zip(record.keys(), record.to_numpy_ndarrays()))
        new, n, metrics = t.fit(arrays, rnd, cfg)
        if rnd in faults.nan.get(pid, []):
            new = {k: np.full_like(v, np.nan) for k, v in new.items()}
        out = ArrayRecord({k: Array(np.ascontiguousarray(new[k])) for k in record.keys()})
        numbers = {NUM_EXAMPLES: int(n), PARTITION_KEY: pid, "pid": os.getpid(),
                   **{k: float(v) for k, v in metrics.items()}}
        return Message(RecordDict({"arrays": out, "metrics": MetricRecord(numbers)}),
                       reply_to=msg)

    return app


def nbytes(record) -> int:
    """Raw bytes of the arrays in a Flower ArrayRecord."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in record.values())


@dataclass
class Plan:
    """What the ServerApp does."""

    initial: Arrays
    clients: int
    rounds: int
    config: dict[str, Any] = field(default_factory=dict)  # sent to every client every round
    config_for_round: Callable[[int], dict[str, Any]] | None = None  # added per round
    noise: float = 0.0  # > 0: Flower's DifferentialPrivacyClientSideFixedClipping
    clip: float = 1.0
    seed: int = 0  # the DP wrapper's noise comes from numpy's global generator
    checkpoint: Path | None = None
    resume: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # a resume must match these
    evaluate: Callable[[int, Arrays], dict[str, float]] | None = None  # server-side, per round
    on_round: Callable[[dict], None] | None = None
    inspect: Callable[[list], None] | None = None  # sees every round's raw replies (tests)


def save_state(ckpt: Path, arrays: Arrays, state: dict) -> None:
    with AtomicDir(ckpt) as tmp:
        np.savez(tmp / "global.npz", **arrays)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_state(ckpt: Path, settings: dict) -> tuple[Arrays, dict]:
    """The checkpoint's global model and state, if it was made with these settings (those a
    resume may change, such as the device, aside)."""
    from training.stage import RESUMABLE_CHANGES

    state = json.loads((ckpt / "state.json").read_text())
    settings = json.loads(json.dumps(settings))
    changed = sorted(k for k in set(settings) | set(state["settings"])
                     if state["settings"].get(k) != settings.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"--resume with other settings than the checkpoint's "
                         f"({', '.join(changed)}); delete {ckpt} to start over")
    with np.load(ckpt / "global.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, state


def finite(record) -> bool:
    return all(np.isfinite(a).all() for a in record.to_numpy_ndarrays())


def server_loop(grid, plan: Plan) -> dict:
    """Rounds of Flower's FedAvg (in its DP wrapper when plan.noise > 0) on `grid`."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    n = plan.clients
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                      min_available_nodes=n, min_evaluate_nodes=0)
    if plan.noise > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=plan.noise, clipping_norm=plan.clip,
            num_sampled_clients=n)

    # Which node is which client: ask once (the reply is the client's index, nothing else).
    nodes = list(grid.get_node_ids())
    deadline = time.monotonic() + 600
    while len(nodes) < n:  # the simulation registers nodes as it starts
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n} Flower nodes started in 10 minutes")
        time.sleep(0.1)
        nodes = list(grid.get_node_ids())
    hello = grid.send_and_receive(
        [Message(RecordDict({}), dst_node_id=node, message_type=MessageType.QUERY)
         for node in nodes])
    client_of = {m.metadata.src_node_id: int(m.content["metrics"][PARTITION_KEY])
                 for m in hello if not m.has_error()}

    arrays, records, start = dict(plan.initial), [], 1
    if plan.resume and plan.checkpoint is not None and (plan.checkpoint / "state.json").exists():
        arrays, state = load_state(plan.checkpoint, plan.settings)
        records = state["rounds"]
        start = len(records) + 1
    names = list(plan.initial)
    for rnd in range(start, plan.rounds + 1):
        began = time.perf_counter()
        global_record = ArrayRecord({k: Array(np.ascontiguousarray(arrays[k])) for k in names})
        config = {**plan.config, **(plan.config_for_round(rnd) if plan.config_for_round else {})}
        messages = list(strategy.configure_train(rnd, global_record, ConfigRecord(config), grid))
        bytes_down = sum(nbytes(m.content["arrays"]) for m in messages)
        replies = list(grid.send_and_receive(messages))
        if plan.inspect is not None:
            plan.inspect(replies)
        good, dropped, bytes_up = [], [], 0
        for m in replies:
            who = client_of.get(m.metadata.src_node_id, m.metadata.src_node_id)
            if m.has_error():
                dropped.append({"client": who, "reason": f"crashed: {_reason(m.error.reason)}"})
                continue
            bytes_up += nbytes(m.content["arrays"])
            if not finite(m.content["arrays"]):
                dropped.append({"client": who, "reason": "non-finite weights"})
                continue
            good.append(m)
        dropped.sort(key=lambda d: str(d["client"]))
        for d in dropped:
            warnings.warn(f"round {rnd}: client {d['client']} dropped ({d['reason']})",
                          stacklevel=2)
        metrics: dict[str, float] = {}
        if good:
            np.random.seed([plan.seed, rnd])  # the DP wrapper's noise: the same after a resume
            new, agg = strategy.aggregate_train(rnd, good)
            if new is not None:
                arrays = dict(zip(new.keys(), new.to_numpy_ndarrays()))
            metrics = {k: float(v) for k, v in dict(agg or {}).items()
                       if k not in (NUM_EXAMPLES, PARTITION_KEY, "pid")}
        rec = {"round": rnd, "bytes": bytes_down + bytes_up, "bytes_down": bytes_down,
               "bytes_up": bytes_up, "clients": len(good), "dropped": dropped, **metrics,
               "seconds": round(time.perf_counter() - began, 2)}
        if plan.evaluate is not None:
            rec.update(plan.evaluate(rnd, arrays))
        records.append(rec)
        if plan.checkpoint is not None:
            save_state(plan.checkpoint, arrays, {"settings": plan.settings, "rounds": records})
        if plan.on_round is not None:
            plan.on_round(rec)
    return {"rounds": records, "arrays": arrays}


def _reason(text: str) -> str:
    """The last line of a client's traceback, e.g. 'InjectedCrash: client 1 crashed ...'."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    found = [ln for ln in lines if "Message: " in ln]
    line = found[-1].split("Message: ", 1)[1] if found else (lines[-1] if lines else "error")
    return line.rstrip("'>")[:200]


def simulate(factory: Callable[[int, int], Trainer], plan: Plan, faults: Faults | None = None,
             num_cpus: int = 2, key: str = "run", num_gpus: float = 0.0) -> dict:
    """Run `plan` on Flower's simulation engine with `plan.clients` ClientApps, each given one
    CPU and `num_gpus` of a GPU."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    quiet()
    server = ServerApp()
    out: dict[str, Any] = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            out["result"] = server_loop(grid, plan)
        except BaseException as err:  # re-raised in the caller's thread below
            out["error"] = err

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server, client_app(factory, key, faults, dp=plan.noise > 0),
                       num_supernodes=plan.clients,
                       backend_config={"client_resources": {"num_cpus": 1,
                                                            "num_gpus": num_gpus},
                                       "init_args": {"num_cpus": num_cpus,
                                                     "include_dashboard": False,
                                                     "logging_level": logging.ERROR,
                                                     "log_to_driver": False}})
    if "error" in out:
        raise out["error"]
    if "result" not in out:
        raise RuntimeError("Flower's simulation ended without running the ServerApp")
    return out["result"]


def quiet() -> None:
    """Flower logs every message at INFO; keep its warnings and errors only."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
