"""What every training stage (pretrain, finetune, rl, import) shares: typed settings from the
model folder's recipe and the command line, the model argument, and one way to finish.

A stage builds its result in a hidden staging folder inside `out` and publishes it only when
the whole result is there: weights, tokenizer, metrics.json (the settings and inputs it was
made from — what the pipeline reads to decide whether the stage is done), loss.png, eval.json
and the card (README.md). Publishing removes what was derived from the old weights (onnx/,
gguf/, eval-*.json), so no runtime can answer with a model that is no longer there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from serving.helpers import (
    UsageError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    normal_modes,
    require_writable,
    temp_dir_beside,
)

S = TypeVar("S")
RECIPE = "recipe.yaml"
DONE_MARKER = "metrics.json"  # published last: a folder with it holds a whole stage's result
CHECKPOINT = "checkpoint"  # <out>/checkpoint: where a running stage saves, and --resume reads
# Settings that may change between a run and its resume, or between a recipe and the folder it
# built, without changing the result (device and precision: a run may go on on another machine).
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_per_task", "device", "precision"})


# ---------------------------------------------------------------------------- settings


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-3` as a string (its floats need a dot); recipes mean a number."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+\.\d*$"),
    list("-+0123456789."))


def read_recipe(folder: str | Path, section: str) -> dict[str, Any]:
    """The `section` of <folder>/recipe.yaml, or {} when the folder has no recipe."""
    path = Path(folder) / RECIPE
    if not path.is_file():
        return {}
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get(section, {}), dict):
        raise UsageError(f"{path}: '{section}' must be a mapping of settings")
    return dict(data.get(section) or {})


def load_settings(cls: type[S], out: Path, section: str, flags: dict[str, Any]) -> S:
    """A stage's settings: its dataclass defaults, overridden by the `section` of
    <out>/recipe.yaml, overridden by the command-line flags that were given. A mistyped or
    mis-typed key fails here, at start-up, with one line (not at step 1,000)."""
    hints = typing.get_type_hints(cls)
    recipe = read_recipe(out, section)
    unknown = sorted(set(recipe) - set(hints))
    if unknown:
        raise UsageError(f"unknown {section} setting(s) in {out / RECIPE}: {', '.join(unknown)} "
                         f"(known: {', '.join(hints)})")
    values = {**recipe, **{k: v for k, v in flags.items() if v is not None}}
    for key, value in values.items():
        values[key] = _typed(value, hints[key], f"{section}.{key}")
    settings = cls(**values)
    check = getattr(settings, "check", None)
    if check is not None:
        check()
    return settings


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` as the dataclass field's type, or a UsageError (ints pass as floats)."""
    base = typing.get_origin(hint) or hint
    if base is typing.Union or isinstance(hint, type(int | None)):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _typed(value, options[0], where)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(base, type) and isinstance(value, base) and not (
            base is int and isinstance(value, bool)):
        return value
    raise UsageError(f"{where} must be {getattr(base, '__name__', base)}, got {value!r}")


def require_positive(**values: float) -> None:
    """One line for the first value that is not a finite number > 0 (--lr nan, --steps 0)."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UsageError(f"{name.replace('_', '-')} must be a finite number > 0, got {value}")


def settings_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


# ---------------------------------------------------------------------------- model arguments


def looks_like_hub_id(name: str) -> bool:
    """'org/name' that is not a local path. A path-like argument ('./x', 'models/x' where
    models/ exists, 'a/b/c') is not one: a typo in it must fail at once, not after a minute
    of retries against the hub."""
    if Path(name).exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    return not Path(name.split("/")[0]).is_dir()


def check_output(out: Path, *inputs: str | Path) -> None:
    """Refuse, before any work, an output folder that cannot be written, or that is one of the
    stage's inputs (also spelt differently): writing there would overwrite the model read."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    require_writable(out)
    for item in inputs:
        path = Path(item)
        if path.exists() and out.exists() and os.path.samefile(path, out):
            raise UsageError(f"--out {out} is the input {item}; write to another folder, "
                             f"e.g. --out {out.parent / (out.name + '-2')}")


# ---------------------------------------------------------------------------- finishing


def plot_loss(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*history) if history else ((), ())
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses)
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def card_text(title: str, sections: dict[str, Any]) -> str:
    """A model card (README.md) from nested dicts: readable as text and on the hub."""
    lines = [f"# {title}", ""]
    for heading, body in sections.items():
        lines += [f"## {heading}", ""]
        if isinstance(body, dict):
            lines += ["| key | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in body.items()]
        else:
            lines.append(str(body))
        lines.append("")
    return "\n".join(lines)


@dataclasses.dataclass
class Finish:
    """What a stage publishes besides the files `save(folder)` writes."""

    save: Callable[[Path], None]  # weights, tokenizer, adapter, data: into the staging folder
    metrics: dict[str, Any]  # → metrics.json; include "settings" and "made_from"
    history: list[tuple[int, float]]  # (step, loss) → loss.png
    title: str  # the card's title and the plot's
    card: Callable[[dict[str, Any]], dict[str, Any]]  # evals → the card's sections
    evaluate: Callable[[Path], dict[str, Any]] | None = None  # the staged folder → eval.json


def finish_stage(out: Path, finish: Finish, checkpoint: Path | None = None) -> None:
    """Build the stage's whole result in a staging folder, then publish it into `out`."""
    build = staging_dir(out)
    try:
        finish.save(build)
        evals = finish.evaluate(build) if finish.evaluate else {}
        if evals:
            atomic_write_json(build / "eval.json", evals)
        if finish.history:
            plot_loss(finish.history, build / "loss.png", finish.title)
        atomic_write_text(build / "README.md", card_text(finish.title, finish.card(evals)))
        atomic_write_json(build / DONE_MARKER, {**finish.metrics, "history": finish.history})
        normal_modes(build)  # what save_pretrained wrote is private to its owner
        publish(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)


def staging_dir(out: Path) -> Path:
    """A hidden folder inside `out` to build a stage's result in."""
    return temp_dir_beside(out / "build")


def publish(build: Path, out: Path) -> None:
    """Make `out` hold exactly the finished `build` (plus its tracked recipe.yaml).

    `out` keeps its recipe, so the folder itself is never replaced: the old entries are removed
    first (weights and everything derived from them), then the new ones moved in, each by one
    rename, the done-marker last.
    """
    keep = {RECIPE, build.name, CHECKPOINT}
    for entry in out.iterdir():
        if entry.name in keep or entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    entries = sorted(build.iterdir(), key=lambda e: e.name == DONE_MARKER)
    for entry in entries:
        os.replace(entry, out / entry.name)

