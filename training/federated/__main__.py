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
    from training.federated import lora
    from training.federated.cli_common import faults_from
    from training.stage import parse_settings

    s, args = parse_settings(parser(), lora.LoraSettings, "federated", argv)  # no recipe
    num_cpus = s.clients if args.num_cpus is None else args.num_cpus
    if num_cpus < 1:
        raise UsageError(f"--num-cpus must be >= 1, got {num_cpus}")
    print(f"clients train on {s.placement().describe()}", flush=True)
    from training.finetune import check_base

    check_base(s.base)
    if args.json:
        require_writable_file(args.json)  # before the rounds, not after
    faults = faults_from(args, s.clients)
    ckpt = checkpoint_path(args, s)
    show_warnings_as_lines()
    for k, tasks in enumerate(s.slices()):
        print(f"client {k} holds: {', '.join(tasks)}", flush=True)
    start = time.perf_counter()
    try:
        fed = lora.run_federated(s, faults, ckpt, args.resume, progress, num_cpus)
    except ValueError as err:  # a checkpoint of other settings
        raise UsageError(str(err)) from None
    out = report(s, fed, time.perf_counter() - start, args.no_baselines)
    print_summary(out)
    if args.json:
        atomic_write_json(args.json, out)
    print(json.dumps({"bytes_per_round": out["bytes_per_round"],
                      "federated": out["federated"]["tasks"]}))


def parser() -> ArgumentParser:
    """The flags that are not settings; parse_settings adds one flag per LoraSettings field."""
    from training.federated.cli_common import add_fault_flags

    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].split("\n")[0])
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
    return p


def checkpoint_path(args, s) -> Path | None:
    """--checkpoint, else OUT.ckpt beside --json; one that --resume finds, or a UsageError."""
    ckpt = args.checkpoint or (args.json.with_name(args.json.name + ".ckpt") if args.json
                               else None)
    if args.resume and (ckpt is None or not (ckpt / "state.json").exists()):
        raise UsageError(f"--resume: no checkpoint at {ckpt or '(give --json or --checkpoint)'}"
                         f"; run: {PROG} --base {s.base} --clients {s.clients} "
                         f"--rounds {s.rounds} --json OUT")
    return ckpt


def progress(rec: dict) -> None:
    extra = f", dropped {[d['client'] for d in rec['dropped']]}" if rec["dropped"] else ""
    loss = f", loss {rec['loss']:.3f}" if "loss" in rec else ""
    print(f"round {rec['round']:3d}: {rec['bytes'] / 2**10:.1f} KiB{loss}, "
          f"{rec['seconds']:.0f} s{extra}", flush=True)


def report(s, fed: dict, fed_seconds: float, no_baselines: bool) -> dict:
    """The --json report: the federated run, the baselines, the bytes that travelled."""
    from training.federated import lora

    rounds = fed["rounds"]
    clean = [r["bytes"] for r in rounds if not r["dropped"]]
    per_round = clean[-1] if clean else rounds[-1]["bytes"]
    return {
        "federated": {"tasks": fed["tasks"], "seconds": round(fed_seconds, 1),
                      "rounds": rounds},
        "centralized": None if no_baselines else lora.run_centralized(s),
        "clients_alone": None if no_baselines else lora.run_clients_alone(s),
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


def print_summary(out: dict) -> None:
    """Accuracy per task of each run, and the bytes per round."""

    def line(name: str, tasks: dict) -> str:
        return f"{name:24s} " + "  ".join(f"{t} {r['accuracy']:.0%}" for t, r in tasks.items())

    print(line("federated", out["federated"]["tasks"]))
    if out["centralized"]:
        print(line("centralized", out["centralized"]["tasks"]))
        for k, alone in enumerate(out["clients_alone"]):
            print(line(f"client {k} alone", alone["tasks"]))
    print(f"bytes per round: {out['bytes_per_round']:,} (adapters) vs "
          f"{out['bytes_per_round_full_weights']:,} (full weights)")


if __name__ == "__main__":
    cli_main(main)()
