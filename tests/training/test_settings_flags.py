"""A stage's flags come from its settings dataclass (training.stage.add_settings_flags): every
field is a flag (or is marked recipe-only), and a flag that is given overrides the recipe, which
overrides the dataclass default."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from serving.helpers import ArgumentParser, UsageError
from training import evaluate, finetune, images, import_gguf, pretrain, rl
from training.federated import __main__ as federated
from training.federated.lora import LoraSettings
from training.stage import flag_name, parse_settings

# (the stage's main, its settings class, its recipe section); a migrated stage is added here
STAGES = [(pretrain.main, pretrain.PretrainSettings, "pretrain"),
          (finetune.main, finetune.FinetuneSettings, "finetune"),
          (rl.main, rl.RLSettings, "rl"),
          (import_gguf.main, import_gguf.ImportSettings, "import_gguf"),
          (federated.main, LoraSettings, "federated"),
          (images.main, images.GenerateSettings, "images-generate"),
          (images.main, images.ClassifySettings, "images-classify"),
          (evaluate.main, evaluate.EvalSettings, "evaluate")]


def help_text(main) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return out.getvalue()


@pytest.mark.parametrize("main, cls, section", STAGES, ids=[s[2] for s in STAGES])
def test_every_setting_is_a_flag(main, cls, section):
    text = help_text(main)
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag", True):
            assert f"{flag_name(f.name)} " in text, f.name


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="test")
    p.add_argument("--out", type=Path, required=True)
    return p


# the stages with a recipe and a seed (federated and images have no --out, so no recipe)
TORCH_STAGES = [s for s in STAGES if s[2] in ("pretrain", "finetune", "rl")]


@pytest.mark.parametrize("main, cls, section", TORCH_STAGES, ids=[s[2] for s in TORCH_STAGES])
def test_a_flag_overrides_the_recipe_which_overrides_the_default(main, cls, section, tmp_path):
    (tmp_path / "recipe.yaml").write_text(f"{section}:\n  seed: 7\n  device: cpu\n")
    s, _ = parse_settings(parser(), cls, section, ["--out", str(tmp_path), "--seed", "3"])
    assert (s.seed, s.device, s.precision) == (3, "cpu", "auto")  # flag, recipe, default
    s, _ = parse_settings(parser(), cls, section, ["--out", str(tmp_path)])
    assert s.seed == 7


def test_list_and_dict_settings_take_json(tmp_path):
    s, _ = parse_settings(parser(), pretrain.PretrainSettings, "pretrain",
                          ["--out", str(tmp_path), "--fact-repeats", '{"addition": 1}'])
    assert s.fact_repeats == {"addition": 1}
    with pytest.raises(UsageError, match="must be dict"):
        parse_settings(parser(), pretrain.PretrainSettings, "pretrain",
                       ["--out", str(tmp_path), "--fact-repeats", "[1]"])


def test_an_alias_sets_its_field(tmp_path):
    s, _ = parse_settings(finetune.parser(), finetune.FinetuneSettings, "finetune",
                          ["--out", str(tmp_path), "--base-model", "some/model"])
    assert s.base == "some/model"


def test_import_gguf_takes_its_source_from_the_recipe_or_a_flag(tmp_path):
    (tmp_path / "recipe.yaml").write_text("import_gguf:\n  gguf: a.gguf\n")
    s, _ = parse_settings(parser(), import_gguf.ImportSettings, "import_gguf",
                          ["--out", str(tmp_path)])
    assert (s.gguf, s.from_package) == ("a.gguf", "")
    s, _ = parse_settings(parser(), import_gguf.ImportSettings, "import_gguf",
                          ["--out", str(tmp_path), "--gguf", "b.gguf"])
    assert s.gguf == "b.gguf"


def test_federated_lora_alpha_follows_lora_r_unless_given():
    s, _ = parse_settings(federated.parser(), LoraSettings, "federated", ["--lora-r", "4"])
    assert (s.lora_r, s.lora_alpha, s.tasks) == (4, 8, ["addition", "subtraction", "glossary"])
    s, _ = parse_settings(federated.parser(), LoraSettings, "federated",
                          ["--lora-alpha", "5", "--tasks", "addition, glossary", "--clients", "2"])
    assert (s.lora_r, s.lora_alpha, s.tasks) == (16, 5, ["addition", "glossary"])
