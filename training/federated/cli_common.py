"""Flags the federated commands share: numbers, and injected faults (CLIENT:ROUND)."""

from __future__ import annotations

import argparse
import math

from serving.helpers import UsageError
from training.federated.engine import Faults


def number(positive: bool = False):
    """An argparse type: a finite number, > 0 (positive) or >= 0."""
    expected = "a number > 0" if positive else "a number >= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def comma_list(text: str) -> list[str]:
    """An argparse type: 'a,b' → ['a', 'b'] (blank items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def client_round(text: str) -> tuple[int, int]:
    try:
        client, rnd = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be CLIENT:ROUND (e.g. 1:2), got {text!r}") from None
    if client < 0 or rnd < 1:
        raise argparse.ArgumentTypeError(f"client must be >= 0 and round >= 1, got {text!r}")
    return client, rnd


def add_fault_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crash", type=client_round, action="append", default=[],
                   metavar="CLIENT:ROUND", help="make a client crash in a round (fault injection)")
    p.add_argument("--nan", type=client_round, action="append", default=[],
                   metavar="CLIENT:ROUND", help="make a client send NaN weights in a round")


def faults_from(args: argparse.Namespace, clients: int) -> Faults:
    faults = Faults()
    for flag, pairs, table in (("--crash", args.crash, faults.crash),
                               ("--nan", args.nan, faults.nan)):
        for client, rnd in pairs:
            if client >= clients:
                raise UsageError(f"{flag} {client}:{rnd}: there are only {clients} clients "
                                 f"(0-{clients - 1})")
            table.setdefault(client, []).append(rnd)
    return faults
