"""The model folder contract (see DESIGN.md): recipes, checks that a stage finished, the card."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from training.common import UsageError, atomic_write_text


def read_recipe(folder: str | Path, section: str) -> dict[str, Any]:
    """The `section` of <folder>/recipe.yaml, or {} when the folder has no recipe."""
    path = Path(folder) / "recipe.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get(section, {}), dict):
        raise UsageError(f"{path}: '{section}' must be a mapping of settings")
    return dict(data.get(section, {}))


def recipe_settings(out: str | Path, section: str, defaults: dict[str, Any],
                    flags: dict[str, Any]) -> dict[str, Any]:
    """Settings in order of precedence: command-line flags (those given), the folder's
    recipe.yaml section, then the stage's defaults. Unknown recipe keys are an error."""
    s = {**defaults, **read_recipe(out, section)}
    unknown = set(s) - set(defaults)
    if unknown:
        raise UsageError(f"unknown {section} setting(s) in recipe: {', '.join(sorted(unknown))}")
    s.update({k: v for k, v in flags.items() if v is not None})
    return s


def require_model(folder: str | Path, made_by: str) -> Path:
    """A local model folder a previous stage finished, or a one-line error naming that stage."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{path} does not exist; run: {made_by}")
    # any *.safetensors: hub snapshots may be sharded (model-00001-of-00002.safetensors)
    if not (path / "config.json").exists() or not any(path.glob("*.safetensors")):
        raise UsageError(f"{path} holds no finished model (config.json + safetensors); run: {made_by}")
    return path


def looks_like_hub_id(name: str) -> bool:
    """A hub id looks like 'org/name' and is not an existing path."""
    return not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/"))


def publish(build: Path, out: Path) -> None:
    """Move every file of a finished `build` dir into `out`, each by atomic rename.

    `out` may hold a tracked recipe.yaml, so the folder itself is never replaced.
    """
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(build.rglob("*")):
        if src.is_file():
            dest = out / src.relative_to(build)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    shutil.rmtree(build, ignore_errors=True)


def staging_dir(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out, prefix=".build-"))


def write_card(path: Path, title: str, sections: dict[str, Any]) -> None:
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
    atomic_write_text(path, "\n".join(lines))


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
