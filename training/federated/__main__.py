"""python -m training.federated --base models/tiny-base --clients 3 --rounds R --json OUT

Federated LoRA fine-tune of a chat model on Flower's simulation engine, each client holding one
slice of the chat data; compared with a centralized LoRA and with each client alone on the
held-out questions of every task. See training/federated/lora.py and docs/federated.md.
(The digits experiment on Flower: python -m training.federated.digits --help)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from serving.helpers import (
    ArgumentParser,
    UsageError,
    atomic_write_json,
    cli_main,
    require_writable_file,
    show_warnings_as_lines,
)

PROG = "python -m training.federated"


def main(argv: list[str] | None = None) -> None:
    from serving.runtimes import add_device_arguments
    from training.federated.cli_common import add_fault_flags, faults_from, number
    from training.federated.lora import TASK_ORDER, WEIGHTINGS, LoraSettings

    d = LoraSettings()
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].split("\n")[0])
    p.add_argument("--base", default=d.base, help="the base model folder (models/tiny-base)")
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--local-steps", type=int, default=d.local_steps,
                   help="optimizer steps each client takes per round")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=number(positive=True), default=d.lr)
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--tasks", default=",".join(d.tasks),
                   help=f"tasks dealt out to the clients, some of {','.join(TASK_ORDER)}")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting,
                   help="FedAvg weights: equal per client (each takes the same number of "
                        "steps) or by the number of examples it holds")
    p.add_argument("--per-task", type=int, default=d.per_task,
                   help="held-out questions per task in the evaluation")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--noise", type=number(), default=0.0,
                   help="noise multiplier of Flower's DifferentialPrivacyClientSideFixedClipping "
                        "(0: plain FedAvg)")
    p.add_argument("--clip", type=number(positive=True), default=d.clip,
                   help="clipping norm of each client's adapter update, with --noise")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the centralized and clients-alone runs")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="Ray's CPUs, one per client process (default: one per client)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--checkpoint", type=Path, help="saved after every round "
                                                   "(default: OUT.ckpt beside --json)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint's last finished round")
    add_fault_flags(p)
    add_device_arguments(p, "every client's model")
    args = p.parse_args(argv)
    if args.num_cpus is None:
        args.num_cpus = args.clients
    for flag in ("clients", "rounds", "local_steps", "batch_size", "lora_r", "per_task",
                 "num_cpus"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    s = LoraSettings(base=args.base, clients=args.clients, rounds=args.rounds,
                     local_steps=args.local_steps, batch_size=args.batch_size, lr=args.lr,
                     lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                     tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                     weighting=args.weighting, seed=args.seed, per_task=args.per_task,
                     noise=args.noise, clip=args.clip, device=args.device or d.device,
                     precision=args.precision or d.precision)
    s.check()
    print(f"clients train on {s.placement().describe()}", flush=True)
    from training.finetune import check_base

    check_base(s.base)
    if args.json:
        require_writable_file(args.json)  # before the rounds, not after
    faults = faults_from(args, s.clients)
    ckpt = args.checkpoint or (args.json.with_name(args.json.name + ".ckpt") if args.json
                               else None)
    if args.resume and (ckpt is None or not (ckpt / "state.json").exists()):
        raise UsageError(f"--resume: no checkpoint at {ckpt or '(give --json or --checkpoint)'}"
                         f"; run: {PROG} --base {s.base} --clients {s.clients} "
                         f"--rounds {s.rounds} --json OUT")
    show_warnings_as_lines()
    for k, tasks in enumerate(s.slices()):
        print(f"client {k} holds: {', '.join(tasks)}", flush=True)

    def progress(rec: dict) -> None:
        extra = f", dropped {[d['client'] for d in rec['dropped']]}" if rec["dropped"] else ""
        loss = f", loss {rec['loss']:.3f}" if "loss" in rec else ""
        print(f"round {rec['round']:3d}: {rec['bytes'] / 2**10:.1f} KiB{loss}, "
              f"{rec['seconds']:.0f} s{extra}", flush=True)

    from training.federated import lora

    start = time.perf_counter()
    try:
        fed = lora.run_federated(s, faults, ckpt, args.resume, progress, args.num_cpus)
    except ValueError as err:  # a checkpoint of other settings
        raise UsageError(str(err)) from None
    fed_seconds = time.perf_counter() - start
    rounds = fed["rounds"]
    clean = [r["bytes"] for r in rounds if not r["dropped"]]
    per_round = clean[-1] if clean else rounds[-1]["bytes"]
    out = {
        "federated": {"tasks": fed["tasks"], "seconds": round(fed_seconds, 1),
                      "rounds": rounds},
        "centralized": None if args.no_baselines else lora.run_centralized(s),
        "clients_alone": None if args.no_baselines else lora.run_clients_alone(s),
        "bytes_per_round": per_round,
        "bytes_per_round_full_weights": 2 * s.clients * fed["full_weight_bytes"],
        "adapter_bytes": fed["adapter_bytes"],
        "full_weight_bytes": fed["full_weight_bytes"],
        "clients": [{"client": k, "data": t} for k, t in enumerate(s.slices())],
        "settings": asdict(s),
        **s.placement().record(),
        "engine": "flwr",
        "privacy": {"noise_multiplier": s.noise, "clip": s.clip if s.noise else None,
                    "wrapper": "DifferentialPrivacyClientSideFixedClipping" if s.noise else None,
                    "epsilon": None,
                    "note": "noise is not accounted here: no epsilon is claimed"},
        "dropped": [{"round": r["round"], **d} for r in rounds for d in r["dropped"]],
    }

    def line(name: str, tasks: dict) -> str:
        return f"{name:24s} " + "  ".join(f"{t} {r['accuracy']:.0%}" for t, r in tasks.items())

    print(line("federated", out["federated"]["tasks"]))
    if out["centralized"]:
        print(line("centralized", out["centralized"]["tasks"]))
        for k, alone in enumerate(out["clients_alone"]):
            print(line(f"client {k} alone", alone["tasks"]))
    print(f"bytes per round: {per_round:,} (adapters) vs "
          f"{out['bytes_per_round_full_weights']:,} (full weights)")
    if args.json:
        atomic_write_json(args.json, out)
    print(json.dumps({"bytes_per_round": per_round, "federated": out["federated"]["tasks"]}))


if __name__ == "__main__":
    cli_main(main)()
