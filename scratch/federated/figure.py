"""python -m scratch.federated.figure RUN.json [RUN.json ...] --out FIG.png

Accuracy vs round of `python -m scratch.federated` runs (one line each, labelled by its split),
with each run's centralized reference, when it has one, as a dashed line. The runs behind
docs/figures/federated_digits.png are listed in docs/federated.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from scratch import helpers

PROG = "python -m scratch.federated.figure"


def label(run: dict) -> str:
    s = run["settings"]
    name = "FedAvg IID" if s["split"] == "iid" else f"FedAvg non-IID (α = {s['alpha']:g})"
    if s.get("noise"):
        name += f", noise {s['noise']:g}"
    return name


def draw(runs: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for run in runs:
        rounds = [r["round"] for r in run["rounds"]]
        ax.plot(rounds, [100 * r["accuracy"] for r in run["rounds"]], marker=".",
                label=f"{label(run)}: {run['final_accuracy']:.1%}")
    for run in runs:
        if run.get("centralized_accuracy") is not None:
            epochs = run["centralized"]["epochs"]
            ax.axhline(100 * run["centralized_accuracy"], color="black", ls="--", lw=1,
                       label=f"centralized, {epochs} epochs: {run['centralized_accuracy']:.1%}")
            break
    s = runs[0]["settings"]
    ax.set(xlabel="round", ylabel="test accuracy (%)",
           title=f"digits MLP, {s['clients']} clients, {s['local_epochs']} local epoch(s) "
                 "per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = helpers.save_figure(fig, out)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="JSON files of python -m scratch.federated")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    runs = []
    for path in args.runs:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise helpers.UsageError(f"{path}: not a readable JSON file ({err})",
                                     "python -m scratch.federated --rounds 3 --json OUT.json"
                                     ) from None
        if not isinstance(run, dict) or not {"rounds", "settings"} <= set(run):
            raise helpers.UsageError(f"{path}: not a python -m scratch.federated report",
                                     "python -m scratch.federated --rounds 3 --json OUT.json")
        runs.append(run)
    print(f"wrote {draw(runs, args.out)}")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
