"""--out never deletes a user's files (issue 23, item 2), and --resume never starts over
(item 5).

Every stage that writes a model folder (pretrain, finetune, rl, import_gguf) refuses, before
any work, a non-empty --out that is not a model folder this project wrote; --force writes the
model beside the other files and keeps them; publishing replaces only what the project wrote.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest

from serving.helpers import UsageError
from tests.conftest import TEST_PRETRAIN
from tests.test_cli_contract import assert_contract, run
from training import stage


def users_folder(where: Path) -> Path:
    """A folder of a user's: a file and a subfolder the stages must never touch."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "important.txt").write_text("keep me")
    (where / "sub").mkdir()
    (where / "sub" / "x").write_text("keep me too")
    return where


def assert_users_files_kept(folder: Path) -> None:
    assert (folder / "important.txt").read_text() == "keep me"
    assert (folder / "sub" / "x").read_text() == "keep me too"


def stage_argv(name: str, out: Path, base: Path, tmp_path: Path) -> list[str]:
    """Each model-writing stage, as small as it runs (the refusal comes before any work)."""
    if name == "import_gguf":
        source = tmp_path / "source.gguf"
        source.write_bytes(b"GGUF not really")
        return ["-m", "training.import_gguf", "--gguf", str(source), "--out", str(out)]
    argv = ["-m", f"training.{name}", "--out", str(out), "--steps", "2"]
    if name == "pretrain":
        (out / "recipe.yaml").write_text(TEST_PRETRAIN)  # today's code ran a tiny pretrain
    else:
        argv += ["--base", str(base)]
    return argv + (["--no-eval"] if name == "finetune" else [])


@pytest.mark.parametrize("name", ["pretrain", "finetune", "rl", "import_gguf"])
def test_a_folder_of_a_users_is_refused_as_out_by_every_stage(tmp_path, name):
    out = users_folder(tmp_path / "mine")
    proc = run(stage_argv(name, out, tmp_path / "no-base", tmp_path))
    hint = assert_contract(proc)
    assert "did not write" in proc.stderr and "important.txt" in proc.stderr
    assert hint.endswith("--force")
    assert_users_files_kept(out)
    assert sorted(p.name for p in out.iterdir()) in (["important.txt", "sub"],
                                                    ["important.txt", "recipe.yaml", "sub"])


@pytest.mark.parametrize("name", ["pretrain", "finetune", "rl", "import_gguf"])
def test_force_still_refuses_a_folder_where_a_users_file_has_a_models_name(tmp_path, name):
    out = users_folder(tmp_path / "checkout")
    (out / "README.md").write_text("the user's readme")  # `--out .` in a checkout
    proc = run([*stage_argv(name, out, tmp_path / "no-base", tmp_path), "--force"])
    hint = assert_contract(proc)
    assert "README.md" in proc.stderr and f"--out {out.resolve()}-model" in hint
    assert (out / "README.md").read_text() == "the user's readme"
    assert_users_files_kept(out)


def test_force_writes_the_model_beside_a_users_files_and_a_rerun_replaces_only_its_own(
        tiny_base, tmp_path):
    out = users_folder(tmp_path / "chat")
    argv = ["-m", "training.finetune", "--base", str(tiny_base), "--out", str(out),
            "--steps", "2", "--no-eval"]
    hint = assert_contract(run(argv))
    forced = run(shlex.split(hint)[1:])  # the hint, as a user would paste it
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert_users_files_kept(out)
    assert (out / "model.safetensors").is_file() and stage.is_model_folder(out)
    # now a model folder of the project's: no --force needed, and what was derived from the
    # old weights goes, while the user's files stay
    (out / "onnx").mkdir()
    (out / "eval-torch.json").write_text("{}")
    again = run(argv)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_users_files_kept(out)
    assert not (out / "onnx").exists() and not (out / "eval-torch.json").exists()


@pytest.mark.parametrize("entries", [[], ["recipe.yaml"], ["recipe.yaml", "checkpoint/"],
                                     [".cache/", "checkpoint/"]])
def test_an_empty_folder_or_one_with_only_a_recipe_and_a_checkpoint_is_accepted(tmp_path,
                                                                                 entries):
    for entry in entries:
        path = tmp_path / entry
        path.mkdir() if entry.endswith("/") else path.write_text("pretrain: {}\n")
    if (tmp_path / "checkpoint").is_dir():  # as an interrupted run leaves it
        (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"settings": {}}))
    stage.check_output(tmp_path, argv=[])


def test_a_users_folder_named_checkpoint_is_refused_even_with_force(tmp_path):
    """A stage writes <out>/checkpoint and removes it when done: a user's folder of that name
    is not its to take."""
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "epoch-3.pt").write_text("the user's")
    with pytest.raises(UsageError, match="holds checkpoint, which this project did not write"):
        stage.check_output(tmp_path, argv=["--out", str(tmp_path)], force=True)


def test_another_tools_metrics_json_does_not_make_a_model_folder(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 1.0}))
    (tmp_path / "notes.txt").write_text("mine")
    assert not stage.is_model_folder(tmp_path)
    with pytest.raises(UsageError, match="metrics.json, which this project did not write"):
        stage.check_output(tmp_path, argv=["--out", str(tmp_path)], force=True)


def test_publish_replaces_the_projects_entries_and_keeps_everything_else(tmp_path):
    out, build = tmp_path / "m", tmp_path / "m" / ".build"
    build.mkdir(parents=True)
    for name in ("recipe.yaml", "notes.txt", "model.safetensors", "eval-gguf.json",
                 ".hidden", stage.DONE_MARKER):
        (out / name).write_text("old")
    for name in ("checkpoint", "gguf", "adapter", "mine"):
        (out / name).mkdir()
    for name in ("model.safetensors", "config.json", stage.DONE_MARKER):
        (build / name).write_text("new")
    (build / "adapter").mkdir()
    stage.publish(build, out)
    left = {p.name: (p.read_text() if p.is_file() else "dir") for p in out.iterdir()}
    assert left == {"recipe.yaml": "old", "notes.txt": "old", ".hidden": "old",
                    "checkpoint": "dir", "mine": "dir", ".build": "dir", "adapter": "dir",
                    "model.safetensors": "new", "config.json": "new", stage.DONE_MARKER: "new"}


def test_every_entry_the_stages_publish_is_a_known_artifact(tiny_base, tiny_chat):
    """publish replaces ARTIFACTS only: an entry a stage writes that is not among them would
    be left stale by the next run (and not be refused under --force)."""
    for folder in (tiny_base, tiny_chat):
        unknown = [p.name for p in folder.iterdir() if p.name != "recipe.yaml"
                   and not stage.is_artifact(p.name)]
        assert not unknown, (folder, unknown)


# ---------------------------------------------------------------------------- --resume


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["pretrain", "finetune", "rl"])
def test_resume_without_a_checkpoint_is_refused(tmp_path, name):
    out = tmp_path / "fresh"
    out.mkdir()
    argv = stage_argv(name, out, tmp_path / "no-base", tmp_path)
    proc = run([*argv, "--resume"])
    hint = assert_contract(proc)
    assert "no checkpoint" in proc.stderr
    assert "--resume" not in hint and not (out / "model.safetensors").exists()


def test_resume_on_a_finished_model_does_not_replace_it(tiny_base, tiny_chat, tmp_path):
    """The issue's case: a finished fine-tune, then --resume with another --lr."""
    out = tmp_path / "chat"
    shutil.copytree(tiny_chat, out)
    before = sha256(out / "model.safetensors")
    proc = run(["-m", "training.finetune", "--base", str(tiny_base), "--out", str(out),
                "--resume", "--lr", "0.01", "--steps", "2", "--no-eval"])
    assert_contract(proc)
    assert "no checkpoint" in proc.stderr
    assert sha256(out / "model.safetensors") == before
