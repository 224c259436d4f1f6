"""Build a model folder from its recipe, every stage in order, reusing the ones still current.

    python -m training.pipeline [--recipe tiny-chat] [--rl] [--serve] [--backend gguf] [--force]

A recipe is models/<name>/recipe.yaml. Its sections say how the folder is made — `pretrain`,
`import_gguf`, or `finetune` / `rl` from a `base` folder (built first, by its own recipe) — and
the pipeline adds what every chat model gets: ONNX and GGUF (f16, q8_0) exports, evaluation in
every runtime serving knows, and with --serve the chat app. --rl also builds the recipes whose
`rl` stage starts from this one (models/tiny-rl for tiny-chat). Each stage is its own command; this
module only decides which still need to run, from what each artifact records it was made from
(the recipe's settings and the base's weights for a training stage, the weights' fingerprint
for an export or an evaluation), not from whether a file exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.helpers import ArgumentParser, UsageError, cli_main, weights_fingerprint
from serving.runtimes import RUNTIMES
from training.stage import CHECKPOINT, DONE_MARKER, RECIPE, RESUMABLE_CHANGES, read_recipe

MODELS = Path("models")
DEFAULT_RECIPE = "tiny-chat"
# How a folder's weights are made, by recipe section: (section, module). The first section a
# recipe has decides; finetune and rl name the folder they start from as `base`.
TRAINING = (("pretrain", "training.pretrain"), ("import_gguf", "training.import_gguf"),
            ("finetune", "training.finetune"), ("rl", "training.rl"))
# The export each runtime needs (torch runs the folder itself), as (script, extra args, output
# path inside the folder, with {name} for the folder's name).
EXPORTS = {
    "onnx": [("scripts/export_onnx.py", ["--force"], "onnx/export.json")],
    "gguf": [("scripts/export_gguf.py", ["--outtype", t, "--force"], f"gguf/{{name}}-{t}.json")
             for t in ("f16", "q8_0")],
}
# Evaluated besides the default file of each runtime: what 8-bit quantization costs.
EXTRA_EVALS = {"gguf-q8_0": ("gguf", "gguf/{name}-q8_0.gguf")}


@dataclass
class Stage:
    """One command of the plan, and how to tell it is already done."""

    name: str
    argv: list[str]  # after `python`
    output: Path | None  # a JSON file the command writes; None: always run (the app)
    folder: Path  # the model folder it reads or writes
    expect: dict[str, Any] = field(default_factory=dict)  # what `output` must record


def recipe_folder(name: str) -> Path:
    """models/<name>, or a folder given as a path; it must hold a recipe."""
    folder = Path(name) if ("/" in name or Path(name).is_dir()) else MODELS / name
    if not (folder / RECIPE).is_file():
        known = sorted(p.parent.name for p in MODELS.glob(f"*/{RECIPE}"))
        raise UsageError(f"no recipe {folder / RECIPE}; recipes here: {', '.join(known)}; "
                         f"e.g. python -m training.pipeline --recipe {DEFAULT_RECIPE}")
    return folder


def training_section(folder: Path) -> tuple[str, str, dict[str, Any]]:
    """(section, module, settings) of the stage that makes `folder`'s weights."""
    for section, module in TRAINING:
        settings = read_recipe(folder, section)
        if settings:
            return section, module, settings
    raise UsageError(f"{folder / RECIPE} has none of the sections "
                     f"{', '.join(s for s, _ in TRAINING)}: nothing says how to build it")


def training_stages(folder: Path, seen: tuple[Path, ...] = ()) -> list[Stage]:
    """The stages that make `folder`'s weights, after those of the folder it starts from."""
    if folder in seen:
        raise UsageError(f"recipes form a loop: {' -> '.join(map(str, (*seen, folder)))}")
    section, module, settings = training_section(folder)
    stages: list[Stage] = []
    expect: dict[str, Any] = {"settings": settings}
    if "base" in settings:
        base = Path(settings["base"])
        if (base / RECIPE).is_file():
            stages += training_stages(base, (*seen, folder))
        expect["base"] = base
    stages.append(Stage(f"{section} {folder}", ["-m", module, "--out", str(folder)],
                        folder / DONE_MARKER, folder, expect))
    return stages


def base_chain(folder: Path) -> list[Path]:
    """The folders `folder` is built from, nearest first (each base that has a recipe)."""
    chain: list[Path] = []
    while True:
        settings = next((read_recipe(folder, s) for s, _ in TRAINING
                         if read_recipe(folder, s)), {})
        base = settings.get("base")
        if not base or not (Path(base) / RECIPE).is_file() or Path(base) in chain:
            return chain
        folder = Path(base)
        chain.append(folder)


def rl_followers(folder: Path) -> list[Path]:
    """Recipes with an `rl` stage built on `folder`, directly or through other recipes (e.g.
    tiny-rl starts from tiny-sum3, a fine-tune of tiny-chat)."""
    return [r.parent for r in sorted(MODELS.glob(f"*/{RECIPE}"))
            if read_recipe(r.parent, "rl").get("base")
            and folder.resolve() in {p.resolve() for p in base_chain(r.parent)}]


def plan(folder: Path, serve: bool, backend: str, rl: bool = False) -> list[Stage]:
    stages = training_stages(folder) + artifact_stages(folder)
    if rl:
        followers = rl_followers(folder)
        if not followers:
            raise UsageError(f"no recipe in {MODELS} has an rl stage with base {folder}; "
                             "see: models/tiny-rl/recipe.yaml")
        for follower in followers:  # its own stages, after those of the target
            planned = {stage.name for stage in stages}
            stages += [stage for stage in training_stages(follower) if stage.name not in planned]
            stages += artifact_stages(follower)
    if serve:
        stages.append(Stage("serve", ["-m", "serving.app", "--model", str(folder), "--backend",
                                      backend], None, folder))
    return stages


def artifact_stages(folder: Path) -> list[Stage]:
    """Every export a runtime needs, then an evaluation in every runtime."""
    stages = []
    for runtime in RUNTIMES:
        for script, extra, output in EXPORTS.get(runtime, []):
            out = folder / output.format(name=folder.name)
            stages.append(Stage(f"export {folder.name}/{out.relative_to(folder)}",
                                [script, str(folder), *extra], out, folder))
    evals = [(rt, []) for rt in RUNTIMES] + [
        (key, ["--gguf", str(folder / path.format(name=folder.name))])
        for key, (_, path) in EXTRA_EVALS.items()]
    for key, extra in evals:
        runtime = EXTRA_EVALS.get(key, (key,))[0]
        out = folder / f"eval-{key}.json"
        stages.append(Stage(f"evaluate {folder.name} {key}",
                            ["-m", "training.evaluate", "--model", str(folder), "--runtime",
                             runtime, *extra, "--json", str(out)], out, folder))
    return stages


class Fingerprints:
    """Weights fingerprints, computed once per folder until a stage rewrites it."""

    def __init__(self):
        self.known: dict[Path, str] = {}

    def __call__(self, folder: Path) -> str:
        if folder not in self.known:
            self.known[folder] = weights_fingerprint(folder)
        return self.known[folder]

    def forget(self, folder: Path) -> None:
        self.known.pop(folder, None)


def is_current(stage: Stage, fingerprint: Fingerprints) -> bool:
    """True when the stage's output exists and was made from what it would be made from now."""
    if stage.output is None or not stage.output.is_file():
        return False
    try:
        record = json.loads(stage.output.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    made_from = record.get("made_from") or {}
    if "settings" in stage.expect:  # a training stage: the recipe's settings and its base
        kept = record.get("settings") or {}
        if any(kept.get(k) != v for k, v in stage.expect["settings"].items()
               if k not in RESUMABLE_CHANGES):  # e.g. another device: the same model
            return False
        base = stage.expect.get("base")
        if base is None or not base.is_dir():
            return True
        return made_from.get("base_weights") == fingerprint(base)
    return made_from.get("weights") == fingerprint(stage.folder)


def can_resume(stage: Stage) -> bool:
    """An interrupted training stage continues from its checkpoint when the checkpoint was made
    with the recipe's settings (a changed recipe starts over, as the stage itself would ask)."""
    state = stage.folder / CHECKPOINT / "state.json"
    if "settings" not in stage.expect or not state.is_file():
        return False
    try:
        saved = json.loads(state.read_text(encoding="utf-8")).get("settings") or {}
    except (OSError, ValueError):
        return False
    wanted = json.loads(json.dumps(stage.expect["settings"], default=str))
    return all(saved.get(k) == v for k, v in wanted.items() if k not in RESUMABLE_CHANGES)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m training.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help=f"models/<name>/recipe.yaml to build (default {DEFAULT_RECIPE})")
    p.add_argument("--rl", action="store_true",
                   help="also build the recipes whose rl stage starts from this one")
    p.add_argument("--serve", action="store_true", help="finish by starting the chat app")
    p.add_argument("--backend", default="gguf", choices=RUNTIMES,
                   help="runtime for the chat app (default gguf: the fastest)")
    p.add_argument("--force", action="store_true", help="redo every stage, even current ones")
    args = p.parse_args(argv)
    if not Path("training").is_dir():
        raise UsageError("run the pipeline from the repository root (cd to the checkout)")
    folder = recipe_folder(args.recipe)
    fingerprint = Fingerprints()
    t0 = time.perf_counter()
    for stage in plan(folder, args.serve, args.backend, args.rl):
        if not args.force and is_current(stage, fingerprint):
            print(f"== {stage.name}: done already ({stage.output})")
            continue
        argv = stage.argv + (["--resume"] if not args.force and can_resume(stage) else [])
        print(f"== {stage.name}: python {' '.join(argv)}  [{time.perf_counter() - t0:.0f}s]",
              flush=True)
        if subprocess.run([sys.executable, *argv]).returncode != 0:
            raise UsageError(f"stage '{stage.name}' failed; fix it and re-run "
                             f"python -m training.pipeline --recipe {args.recipe} "
                             "(finished stages are kept)")
        if stage.output is not None and stage.output.name == DONE_MARKER:
            fingerprint.forget(stage.folder)  # new weights: every later check recomputes


if __name__ == "__main__":
    cli_main(main)()
