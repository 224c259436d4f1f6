"""One answer to "is this a finished model folder?" for both exporters, evaluation and the app;
and weights a diverged run left (NaN, inf) are never exported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving.helpers import UsageError, require_model, weights_fingerprint
from tests.export.conftest import make_random_llama
from training.export.gguf import export_gguf
from training.export.onnx import load_checked


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A model saved as two safetensors shards with an index, as hub snapshots often are."""
    from transformers import AutoModelForCausalLM

    folder = make_random_llama(tmp_path_factory.mktemp("folders") / "whole")
    model = AutoModelForCausalLM.from_pretrained(folder)
    out = folder.parent / "sharded"
    model.save_pretrained(out, max_shard_size="300KB")
    for f in folder.glob("tokenizer*"):
        shutil.copy(f, out)
    shutil.copy(folder / "chat_template.jinja", out)
    assert len(list(out.glob("*.safetensors"))) > 1
    return out


def test_a_sharded_folder_is_a_model_to_every_reader(sharded, tmp_path):
    require_model(sharded, "unused")
    assert load_checked(sharded) is not None  # the ONNX exporter's check and load
    summary = export_gguf(sharded, tmp_path / "s-f32.gguf", "f32")
    assert summary["made_from"]["weights"] == weights_fingerprint(sharded)
    from serving.runtimes import load_backend

    assert load_backend(sharded, "torch").generate([{"role": "user", "content": "hi"}],
                                                   3) is not None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_exporters_refuse_non_finite_weights(tmp_path, bad):
    folder = make_random_llama(tmp_path / "diverged")
    state = load_file(folder / "model.safetensors")
    name = next(k for k in state if k.endswith("mlp.down_proj.weight"))
    state[name][0, 0] = bad
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UsageError, match="non-finite weights"):
        export_gguf(folder, folder / "gguf" / "d-f16.gguf", "f16")
    with pytest.raises(UsageError, match="non-finite weights"):
        load_checked(folder)
    assert not (folder / "gguf").exists() or not list((folder / "gguf").iterdir())


def test_a_folder_without_weights_or_config_names_the_stage_to_run(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UsageError, match="holds no finished model.*run: python -m training"):
        require_model(tmp_path / "half", "python -m training.pretrain --out x")
    with pytest.raises(UsageError, match="does not exist"):
        require_model(tmp_path / "none", "python -m training.pretrain --out x")


def test_the_fingerprint_follows_the_weights(tmp_path):
    folder = make_random_llama(tmp_path / "m")
    before = weights_fingerprint(folder)
    assert weights_fingerprint(folder) == before
    state = load_file(folder / "model.safetensors")
    next(iter(state.values())).add_(torch.tensor(1.0))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    assert weights_fingerprint(folder) != before
