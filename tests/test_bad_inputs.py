"""Broken files and bad values get the one-line contract in every command that reads them —
never a traceback, never a half-written output. (The contract itself: test_cli_contract.py.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.export.conftest import make_random_llama
from tests.test_cli_contract import assert_contract, run


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return make_random_llama(tmp_path_factory.mktemp("bad-inputs") / "good")


def broken_copy(good: Path, where: Path, what: str) -> Path:
    folder = where / what
    shutil.copytree(good, folder)
    weights = folder / "model.safetensors"
    if what == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif what == "random-weights":
        weights.write_bytes(os.urandom(4096))
    elif what == "empty-weights":
        weights.write_bytes(b"")
    elif what == "invalid-config":
        (folder / "config.json").write_text("{ not json")
    elif what == "config-without-model-type":
        (folder / "config.json").write_text(json.dumps({"hidden_size": 64}))
    return folder


def commands(model: Path, out: Path) -> dict[str, list[str]]:
    return {
        "finetune": ["-m", "training.finetune", "--base", str(model), "--out", str(out),
                     "--steps", "1", "--no-eval"],
        "evaluate": ["-m", "training.evaluate", "--model", str(model), "--per-task", "1"],
        "export_onnx": ["scripts/export_onnx.py", str(model)],
        "export_gguf": ["scripts/export_gguf.py", str(model)],
        "app (torch)": ["-m", "serving.app", "--model", str(model), "--backend", "torch",
                        "--port", "1"],  # fails on the model before it would bind
    }


@pytest.mark.parametrize("damage", ["truncated-weights", "random-weights", "empty-weights",
                                    "invalid-config", "config-without-model-type"])
@pytest.mark.parametrize("command", list(commands(Path("m"), Path("o"))))
def test_a_corrupt_model_folder_is_one_line(good_model, tmp_path, damage, command):
    model = broken_copy(good_model, tmp_path, damage)
    out = tmp_path / "out"
    argv = commands(model, out)[command]
    if command == "app (torch)":
        argv[argv.index("--port") + 1] = str(_free_port())
    assert_contract(run(argv))
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    assert not (model / "onnx").exists() and not list(model.glob("gguf/*.gguf"))


@pytest.mark.parametrize("runtime", ["onnx", "gguf"])
def test_a_corrupt_export_is_one_line(good_model, tmp_path, runtime):
    model = broken_copy(good_model, tmp_path, "copy")
    target = model / ("onnx/model.onnx" if runtime == "onnx" else "gguf/copy-f16.gguf")
    target.parent.mkdir()
    target.write_bytes(os.urandom(2048))
    if runtime == "onnx":
        shutil.copy(model / "tokenizer.json", model / "onnx" / "tokenizer.json")
        shutil.copy(model / "tokenizer_config.json", model / "onnx" / "tokenizer_config.json")
    for argv in (["-m", "training.evaluate", "--model", str(model), "--runtime", runtime],
                 ["-m", "serving.app", "--model", str(model), "--backend", runtime,
                  "--port", str(_free_port())]):
        assert_contract(run(argv))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_on_a_taken_port_is_one_line_before_loading(good_model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(["-m", "serving.app", "--model", str(good_model), "--port", str(port)])
    hint = assert_contract(proc)
    assert "already in use" in proc.stderr and f"--port {port + 1}" in hint


def test_an_empty_dataset_is_one_line(good_model, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run(["-m", "training.finetune", "--base", str(good_model), "--out",
                str(tmp_path / "o"), "--dataset", str(empty)])
    assert_contract(proc)
    assert "no rows" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_learning_rate_that_is_not_a_positive_number_is_one_line(tmp_path, value):
    proc = run(["-m", "training.pretrain", "--out", str(tmp_path / "o"), "--lr", value])
    assert_contract(proc)
    assert "lr must be a finite number > 0" in proc.stderr
