"""python -m scratch.federated --clients 10 --split iid|dirichlet --alpha A --rounds R --json OUT

FedAvg of scratch.nn's digits MLP across simulated clients, each holding a private shard of the
training images, and the centralized model with the same total compute as the reference.
--noise Z (with --clip C) turns on DP-FedAvg; --crash/--nan inject faulty clients.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from scratch import helpers

PROG = "python -m scratch.federated"


def positive_float(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    import argparse

    if text.strip() in ("0", "0.0"):
        return 0.0
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None


def client_round(text: str) -> tuple[int, int]:
    """'CLIENT:ROUND' -> (client, round)."""
    import argparse

    try:
        client, rnd = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be CLIENT:ROUND (e.g. 3:2), got {text!r}") from None
    if client < 0 or rnd < 1:
        raise argparse.ArgumentTypeError(f"client must be >= 0 and round >= 1, got {text!r}")
    return client, rnd


def faults_of(pairs: list[tuple[int, int]], clients: int, flag: str) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for client, rnd in pairs:
        if client >= clients:
            raise helpers.UsageError(f"{flag} {client}:{rnd}: there are only {clients} clients "
                                     f"(0-{clients - 1})")
        out.setdefault(client, set()).add(rnd)
    return out


def privacy_report(s) -> dict:
    from scratch.federated.core import epsilon

    if s.noise > 0:
        eps = epsilon(s.noise, s.rounds, s.delta)
        return {"epsilon": round(eps, 3), "delta": s.delta, "noise_multiplier": s.noise,
                "clip": s.clip, "level": "client (one client's whole shard added or removed)",
                "accounting": "Renyi DP of the Gaussian mechanism composed over all rounds; "
                              "every client in every round, so no amplification by sampling; "
                              "numpy's Gaussian sampler (not a floating-point-safe one) and "
                              "hyperparameter search are not accounted"}
    note = ("clipping alone bounds each client's influence but adds no noise: no differential "
            "privacy guarantee" if s.clip is not None else "no differential privacy: no noise")
    return {"epsilon": None, "delta": None, "noise_multiplier": 0.0, "clip": s.clip,
            "note": note}


def main(argv: list[str] | None = None) -> int:
    p = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].split("\n")[0])
    p.add_argument("--clients", type=helpers.int_range(1, 200), default=10)
    p.add_argument("--split", choices=("iid", "dirichlet"), default="iid",
                   help="how the training images are dealt: iid, or by a Dirichlet draw over "
                        "labels (non-IID)")
    p.add_argument("--alpha", type=positive_float, default=0.5,
                   help="Dirichlet concentration for --split dirichlet (0.1: most clients see "
                        "one or two digits; 1.0: a mild skew)")
    p.add_argument("--rounds", type=helpers.int_range(1), default=30)
    p.add_argument("--local-epochs", type=helpers.int_range(1), default=1,
                   help="passes over its shard each client makes per round")
    p.add_argument("--batch-size", type=helpers.int_range(1), default=32)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--seed", type=helpers.int_range(0), default=0)
    p.add_argument("--clip", type=positive_float,
                   help="clip each client's update to this L2 norm (DP-FedAvg)")
    p.add_argument("--noise", type=nonnegative_float, default=0.0,
                   help="noise multiplier z: Gaussian noise of std z*clip/clients on the "
                        "averaged update (needs --clip)")
    p.add_argument("--delta", type=positive_float, default=1e-5,
                   help="delta at which epsilon is reported")
    p.add_argument("--crash", type=client_round, action="append", default=[],
                   metavar="CLIENT:ROUND", help="make a client crash in a round (fault injection)")
    p.add_argument("--nan", type=client_round, action="append", default=[],
                   metavar="CLIENT:ROUND", help="make a client send NaN weights in a round")
    p.add_argument("--no-centralized", action="store_true",
                   help="skip the centralized reference run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--checkpoint", type=Path,
                   help="saved after every round (default: OUT.ckpt.npz beside --json)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint's last finished round")
    p.add_argument("--threads", type=helpers.int_range(1), default=1, help="BLAS threads")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from scratch.federated import core

    s = core.Settings(clients=args.clients, split=args.split, alpha=args.alpha,
                      rounds=args.rounds, local_epochs=args.local_epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, clip=args.clip,
                      noise=args.noise, delta=args.delta)
    if not s.delta < 1:
        p.error(f"argument --delta: must be < 1, got {s.delta}")
    try:
        s.check()
    except ValueError as err:
        raise helpers.UsageError(err) from None
    faults = {"crash": faults_of(args.crash, s.clients, "--crash"),
              "nan": faults_of(args.nan, s.clients, "--nan")}
    ckpt = args.checkpoint or (args.json.with_name(args.json.name + ".ckpt.npz")
                               if args.json else None)
    if args.resume and ckpt is None:
        p.error("--resume needs --checkpoint PATH or --json OUT (its checkpoint is OUT.ckpt.npz)")
    if args.resume and not ckpt.exists():
        raise helpers.UsageError(f"--resume: no checkpoint at {ckpt}; run without --resume first")

    helpers.show_warnings_as_lines()
    threadpool_limits(args.threads)
    start = time.perf_counter()
    data = core.Digits.load()
    try:
        clients = core.make_clients(s, data, faults)
    except ValueError as err:  # a split that leaves a client nothing
        raise helpers.UsageError(err) from None

    def progress(rec) -> None:
        extra = f", dropped {[d['client'] for d in rec.dropped]}" if rec.dropped else ""
        print(f"round {rec.round:3d}: accuracy {rec.accuracy:.2%}, "
              f"{rec.bytes / 2**20:.1f} MiB{extra}", flush=True)

    try:
        result = core.run(s, clients, data, checkpoint=ckpt, resume=args.resume,
                          on_round=progress)
    except ValueError as err:  # a checkpoint of other settings
        raise helpers.UsageError(err) from None
    federated_seconds = time.perf_counter() - start
    central = None if args.no_centralized else core.run_centralized(s, data)
    rounds = result["rounds"]
    out = {
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"],
        "centralized_accuracy": central["accuracy"] if central else None,
        "centralized": central,
        "settings": asdict(s),
        "shard_sizes": [c.num_examples for c in clients],
        "model_bytes": core.num_bytes(result["weights"]),
        "privacy": privacy_report(s),
        "dropped": [{"round": r["round"], **d} for r in rounds for d in r["dropped"]],
        "federated_seconds": round(federated_seconds, 2),
    }
    summary = {k: out[k] for k in ("final_accuracy", "centralized_accuracy")}
    summary["epsilon"] = out["privacy"]["epsilon"]
    print(json.dumps(summary))
    if args.json:
        helpers.write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
