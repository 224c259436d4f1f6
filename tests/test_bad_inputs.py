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


def run_without_write_access(argv: list[str], read_only: Path, tmp: Path):
    """Run a command that may read everything but not write `read_only`. Root ignores mode
    bits, so as root the command runs as the unprivileged user nobody."""
    import subprocess
    import sys

    for path in (read_only, *read_only.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    home = tmp / "home"
    home.mkdir(mode=0o777, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1]),
           "HF_HOME": str(home / "hf"), "MPLCONFIGDIR": str(home / "mpl")}
    return subprocess.run([*prefix, sys.executable, *argv], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], env=env, timeout=300)


@pytest.fixture
def shared_tmp():
    """A temp folder other users can enter (pytest's own is private to its owner)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mlzero-ro-"))
    folder.chmod(0o755)
    yield folder
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


@pytest.mark.parametrize("command", ["export_onnx", "export_gguf", "pretrain", "finetune"])
def test_a_read_only_output_folder_is_one_line(good_model, shared_tmp, command):
    model = shared_tmp / "model"
    shutil.copytree(good_model, model)
    argv = {
        "export_onnx": ["scripts/export_onnx.py", str(model)],
        "export_gguf": ["scripts/export_gguf.py", str(model)],
        "pretrain": ["-m", "training.pretrain", "--out", str(model / "new")],
        "finetune": ["-m", "training.finetune", "--base", str(good_model), "--out",
                     str(model / "new")],
    }[command]
    proc = run_without_write_access(argv, model, shared_tmp)
    assert_contract(proc)
    assert "not writable" in proc.stderr or "permission denied" in proc.stderr


def test_what_a_killed_export_left_is_cleaned_by_the_next_run(good_model, tmp_path):
    import subprocess
    import sys

    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    # a writer that no longer runs: a pid taken from a finished process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (model / "gguf").mkdir()
    stale_file = model / "gguf" / f".m-f16.gguf.tmp-{dead}-abc123.tmp"
    stale_file.write_bytes(b"half a gguf")
    stale_dir = model / f".onnx.tmp-{dead}-xyz"
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"half an onnx")
    live = model / "gguf" / f".m-f16.gguf.tmp-{os.getpid()}-mine.tmp"  # a running writer's
    live.write_bytes(b"in progress")
    for argv in (["scripts/export_gguf.py", str(model)], ["scripts/export_onnx.py", str(model)]):
        proc = run(argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale_file.exists() and not stale_dir.exists() and live.exists()
    assert (model / "gguf" / "m-f16.gguf").is_file() and (model / "onnx" / "model.onnx").is_file()


def test_a_mistyped_local_base_fails_at_once_without_asking_the_hub(tmp_path):
    proc = run(["-m", "training.finetune", "--base", "models/tiny-bsae", "--out",
                str(tmp_path / "o")])
    assert_contract(proc)
    assert "neither a local folder nor a hub id" in proc.stderr


def test_weights_load_from_safetensors_only(good_model, tmp_path):
    """A pickle checkpoint can run code when it is loaded; it is never read."""
    import pickle

    model = tmp_path / "pickled"
    shutil.copytree(good_model, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    for argv in (["-m", "training.evaluate", "--model", str(model)],
                 ["-m", "serving.app", "--model", str(model), "--port", str(_free_port())],
                 ["-m", "training.finetune", "--base", str(model), "--out", str(tmp_path / "o")],
                 ["scripts/export_onnx.py", str(model)]):
        proc = run(argv)
        assert_contract(proc)
        assert "safetensors" in proc.stderr
    assert not marker.exists()
    # beside safetensors, the pickle is ignored (not loaded first, not loaded at all)
    shutil.copy(good_model / "model.safetensors", model / "model.safetensors")
    from serving.runtimes import load_backend

    assert load_backend(model, "torch").generate([{"role": "user", "content": "hi"}], 2) is not None
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "export_gguf", "federated", "digits", "images"])
def test_a_folder_given_as_the_json_output_is_refused_before_the_work(good_model, tmp_path,
                                                                       command):
    """--json names a file; a folder there used to end in IsADirectoryError after the work."""
    folder = tmp_path / "reports"
    folder.mkdir()
    argv = {
        "evaluate": ["-m", "training.evaluate", "--model", str(good_model), "--per-task", "1"],
        "export_gguf": ["scripts/export_gguf.py", str(good_model), "--out-dir",
                        str(tmp_path / "gguf")],
        "federated": ["-m", "training.federated", "--base", str(good_model), "--clients", "1",
                      "--rounds", "1", "--no-baselines"],
        "digits": ["-m", "training.federated.digits", "--clients", "1", "--rounds", "1",
                   "--no-centralized"],
        "images": ["-m", "training.images", "--task", "classify", "--epochs", "1"],
    }[command]
    proc = run([*argv, "--json", str(folder)], timeout=60)
    assert_contract(proc)
    assert "is a folder" in proc.stderr
    assert not (tmp_path / "gguf").exists()  # refused before the export, not after


@pytest.mark.parametrize("exporter", ["export_onnx", "export_gguf"])
def test_a_garbage_tokenizer_is_refused_by_the_exporters_with_nothing_written(good_model,
                                                                               tmp_path, exporter):
    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    (model / "tokenizer.json").write_text("{ this is not json")
    proc = run([f"scripts/{exporter}.py", str(model)])
    assert_contract(proc)
    assert "tokenizer" in proc.stderr
    assert not (model / "onnx").exists() and not (model / "gguf").exists()


def test_an_onnx_opset_the_exporter_cannot_write_is_refused(good_model, tmp_path):
    """torch's exporter writes opset 18 when asked for less; recording the asked-for 1 lied."""
    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    proc = run(["scripts/export_onnx.py", str(model), "--opset", "1"])
    hint = assert_contract(proc)
    assert "--opset 18" in hint and not (model / "onnx").exists()


def test_the_onnx_export_records_the_opset_it_wrote(good_model, tmp_path):
    import onnx

    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    proc = run(["scripts/export_onnx.py", str(model)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    graph = onnx.load(str(model / "onnx" / "model.onnx"), load_external_data=False)
    wrote = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert json.loads((model / "onnx" / "export.json").read_text())["opset"] == wrote


@pytest.mark.parametrize("name", ["../../escape", "sub/escape", "..", ".hidden", ""])
def test_a_gguf_name_that_is_not_a_plain_file_name_is_refused(good_model, tmp_path, name):
    model = tmp_path / "models" / "m"
    shutil.copytree(good_model, model)
    before = sorted(tmp_path.rglob("*"))
    proc = run(["scripts/export_gguf.py", str(model), "--name", name])
    assert_contract(proc)
    assert "--name" in proc.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, inside or outside
