"""What every training stage (pretrain, finetune, rl, import) shares: typed settings from the
model folder's recipe and the command line, the model argument, and one way to finish.

A stage builds its result in a hidden staging folder inside `out` and publishes it only when
the whole result is there: weights, tokenizer, metrics.json (the settings and inputs it was
made from — what the pipeline reads to decide whether the stage is done), loss.png, eval.json
and the card (README.md). Publishing removes what was derived from the old weights (onnx/,
gguf/, eval-*.json), so no runtime can answer with a model that is no longer there.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import math
import os
import re
import shlex
import shutil
import sys
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
    program,
    read_json_object,
    require_writable,
    temp_dir_beside,
)
from serving.runtimes import PRECISION_HELP, PRECISIONS, device_help

S = TypeVar("S")
RECIPE = "recipe.yaml"
DONE_MARKER = "metrics.json"  # published last: a folder with it holds a whole stage's result
CHECKPOINT = "checkpoint"  # <out>/checkpoint: where a running stage saves, and --resume reads
# Settings that may change between a run and its resume, or between a recipe and the folder it
# built, without changing the result (device and precision: a run may go on on another machine).
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_per_task", "device", "precision"})
# Every entry a stage, an export or an evaluation writes in a model folder. Publishing replaces
# these and nothing else: a user's own files in the folder stay, and --force refuses a folder
# where a user's file has one of these names.
ARTIFACTS = ("*.safetensors", "model.safetensors.index.json", "config.json",
             "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
             "merges.txt", "chat_template.jinja", "adapter", "data", "README.md", "loss.png",
             "eval.json", "eval-*.json", "rl.json", "rl.png", DONE_MARKER, "onnx", "gguf")


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


def load_settings(cls: type[S], out: Path | None, section: str, flags: dict[str, Any]) -> S:
    """A stage's settings: its dataclass defaults, overridden by the `section` of
    <out>/recipe.yaml (none when `out` is None: a command with no model folder), overridden by
    the command-line flags that were given. A mistyped or mis-typed key fails here, at
    start-up, with one line (not at step 1,000)."""
    hints = typing.get_type_hints(cls)
    recipe = read_recipe(out, section) if out is not None else {}
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


# ---------------------------------------------------------------------------- settings → flags
# A stage's flags are its settings' fields, the way transformers.HfArgumentParser turns
# TrainingArguments into flags: `lr: float = 3e-3` is `--lr` (a float), a `snake_case` field is
# `--snake-case`. A field's metadata may give "help", "aliases" (more names, e.g. --base-model),
# "choices", "type" (the flag's parser, e.g. a comma list), or "flag": False (recipe-only). A
# list or dict field takes JSON (--tasks '["sum3"]'), as its recipe key does in YAML, unless it
# names its own "type". Every flag defaults to None: not given means the recipe's value, else
# the dataclass default.


def device_field(what: str = "the model") -> Any:
    """The `device` setting of a torch stage (serving/device.py resolves it): --device."""
    return dataclasses.field(default="auto", metadata={"help": device_help(what)})


def precision_field() -> Any:
    """The `precision` setting of a torch stage: --precision."""
    return dataclasses.field(default="auto",
                             metadata={"help": PRECISION_HELP, "choices": PRECISIONS})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser, *classes: type) -> None:
    """One flag per field of the settings dataclasses (but those marked "flag": False). A
    command with several (training.images: one per --task) gets one flag per field name, from
    the first class that has it."""
    seen: set[str] = set()
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag", True) is not False and f.name not in seen:
                seen.add(f.name)
                _add_flag(parser, f, hints[f.name])


def _add_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    parser.add_argument(flag_name(f.name), *f.metadata.get("aliases", ()), dest=f.name,
                        type=f.metadata.get("type") or _flag_type(hint),
                        choices=f.metadata.get("choices"), default=None, help=_flag_help(f))


def parse_settings(parser: argparse.ArgumentParser, cls: type[S], section: str,
                   argv: list[str] | None) -> tuple[S, argparse.Namespace]:
    """Parse argv with the settings' flags added to `parser` (which has the stage's other
    flags), then load_settings: defaults < <out>/recipe.yaml `section` (when the parser has an
    --out) < given flags, then check(). Returns the settings and the parsed arguments."""
    add_settings_flags(parser, cls)
    args = parser.parse_args(argv)
    return settings_from(cls, args, getattr(args, "out", None), section), args


def settings_from(cls: type[S], args: argparse.Namespace, out: Path | None, section: str) -> S:
    """load_settings with the values of add_settings_flags' flags in `args`."""
    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return load_settings(cls, out, section, flags)


def _flag_type(hint: Any) -> Callable[[str], Any]:
    """How a flag's text becomes the field's type: int, float, str; JSON for list and dict."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    base = typing.get_origin(hint) or hint
    if base is typing.Union or isinstance(hint, type(int | None)):
        return _flag_type(options[0])  # Optional[X]: X
    if base in (list, dict):
        return _json_value
    if base is bool:
        return _bool_value
    return base


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} (e.g. '[2, 3]' or "
                                         "'{\"sum3\": 100}')") from None


def _bool_value(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"not true or false: {text!r}")
    return text.lower() in ("true", "1", "yes")


def _flag_help(f: dataclasses.Field) -> str:
    """The field's help, with its dataclass default unless the help speaks of the default."""
    text = f.metadata.get("help", "")
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if "default" not in text and default != "":  # "" is "not set": nothing to show
        shown = json.dumps(default) if isinstance(default, (list, dict)) else default
        text = f"{text} (default {shown})".strip()
    return text.replace("%", "%%")  # argparse formats help with %


def require_positive(**values: float) -> None:
    """One line for the first value that is not a finite number > 0 (--lr nan, --steps 0)."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UsageError(f"{name.replace('_', '-')} must be a finite number > 0, got {value}")


# ---------------------------------------------------------------------------- model arguments


def looks_like_hub_id(name: str) -> bool:
    """'org/name' that is not a local path. A path-like argument ('./x', 'models/x' where
    models/ exists, 'a/b/c') is not one: a typo in it must fail at once, not after a minute
    of retries against the hub."""
    if Path(name).exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    return not Path(name.split("/")[0]).is_dir()


def check_output(out: Path, *inputs: str | Path, argv: list[str] | None = None,
                 force: bool = False, resume: bool = False) -> None:
    """Refuse, before any work, an output folder that cannot be written, that is one of the
    stage's inputs (also spelt differently): writing there would overwrite the model read,
    that holds files this project did not write (see check_owned), or that has no checkpoint
    for --resume. `argv` (the command's, default sys.argv) builds the hints."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    require_writable(out)
    for item in inputs:
        path = Path(item)
        if path.exists() and out.exists() and os.path.samefile(path, out):
            raise UsageError(f"--out {out} is the input {item}; write to another folder, "
                             f"e.g. --out {out.parent / (out.name + '-2')}")
    check_owned(out, argv, force)
    if resume and not (out / CHECKPOINT / "state.json").is_file():
        # without this, --resume started over and replaced the finished model
        raise UsageError(f"--resume: no checkpoint in {out / CHECKPOINT} to continue (a run "
                         f"that finishes removes it); run: {command(argv, drop='--resume')}")


def check_owned(out: Path, argv: list[str] | None, force: bool) -> None:
    """A non-empty --out must be a model folder this project wrote: publishing replaces what
    is there. With --force the model goes in beside the other files, which are kept; a folder
    where one of them has a name the model would take is refused even then."""
    if not out.is_dir() or is_model_folder(out):
        return
    found = sorted(e.name for e in out.iterdir() if not (
        e.name == RECIPE or e.name.startswith(".") or is_checkpoint(e)))
    if not found:
        return  # empty, or only the tracked recipe and an interrupted run's checkpoint
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    # a stage also writes (and at the end removes) <out>/checkpoint
    taken = [name for name in found if is_artifact(name) or name == CHECKPOINT]
    if taken:
        elsewhere = out.resolve().with_name(out.resolve().name + "-model")
        raise UsageError(f"--out {out} holds {', '.join(taken[:3])}, which this project did not "
                         f"write and the model would replace; give an empty or new folder; "
                         f"run: {command(argv, add=('--out', str(elsewhere)))}")
    if not force:
        raise UsageError(f"--out {out} holds files this project did not write ({shown}); give "
                         "an empty or new folder, or add --force to write the model beside "
                         f"them (they are kept); run: {command(argv, add=('--force',))}")


def is_artifact(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ARTIFACTS)


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is <out>/checkpoint as a stage writes it (its state.json records the
    settings), not a user's folder of that name."""
    return path.name == CHECKPOINT and "settings" in read_json_object(path / "state.json")


def is_model_folder(out: Path) -> bool:
    """Whether `out` holds this project's done-marker (another tool's metrics.json has no
    `made_from`): a folder a stage published, or began to publish."""
    return "made_from" in read_json_object(out / DONE_MARKER)


def command(argv: list[str] | None, drop: str = "", add: tuple[str, ...] = ()) -> str:
    """The running command again, without the flag `drop`, with `add` (argparse takes the last
    of a repeated option): a hint that is itself a working command."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != drop]
    return " ".join([program(), shlex.join([*args, *add])]).strip()


def add_force_flag(p: Any) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into an --out that holds other files: they are kept, and only "
                        "what this project wrote there is replaced")


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


def finish_stage(out: Path, finish: Finish, checkpoint: Path | None = None) -> dict[str, Any]:
    """Build the stage's whole result in a staging folder, then publish it into `out`.
    Returns the evaluations (eval.json's content, {} when none), for the stage to print."""
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
    return evals


def staging_dir(out: Path) -> Path:
    """A hidden folder inside `out` to build a stage's result in."""
    return temp_dir_beside(out / "build")


def publish(build: Path, out: Path) -> None:
    """Put the finished `build` into `out`, replacing what this project wrote there before
    (the old weights and everything derived from them: ARTIFACTS) and nothing else: the tracked
    recipe.yaml, the checkpoint, dot-files and a user's own files stay.

    The folder itself is never replaced. A placeholder done-marker goes in first, so a folder
    a crash leaves half-published is still known as this project's (and, recording no
    settings, not as finished); then the old entries are removed and the new ones moved in,
    each by one rename, the done-marker last.
    """
    new = {entry.name for entry in build.iterdir()}
    atomic_write_json(out / DONE_MARKER, {"made_from": None, "publishing": True})
    for entry in out.iterdir():
        if entry.name == DONE_MARKER or not (entry.name in new or is_artifact(entry.name)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    entries = sorted(build.iterdir(), key=lambda e: e.name == DONE_MARKER)
    for entry in entries:
        os.replace(entry, out / entry.name)

