"""Integration tests: each stage runs for real on the tiny test recipe (see conftest)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, TEST_FINETUNE, run_cli


def test_pretrain_writes_a_complete_model_folder(tiny_base):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "README.md", "loss.png", "metrics.json", "recipe.yaml"):
        assert (tiny_base / name).is_file(), name
    assert not (tiny_base / "checkpoint").exists()
    assert not list(tiny_base.glob(".*")), "leftover staging or temp files"
    metrics = json.loads((tiny_base / "metrics.json").read_text())
    first_loss = metrics["history"][0][1]
    assert metrics["final_train_loss"] < first_loss - 1.0  # it learned something
    assert metrics["val_perplexity"] < 512  # better than uniform over the vocabulary
    card = (tiny_base / "README.md").read_text()
    assert "hidden_size" in card and "val_perplexity" in card


def test_finetune_saves_adapter_and_a_merged_model_that_loads_alone(tiny_base, tiny_chat):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_chat / "adapter" / "adapter_config.json").is_file()
    assert (tiny_chat / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tiny_chat)
    tok = AutoTokenizer.from_pretrained(tiny_chat)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}],
                                                add_generation_prompt=True, return_dict=False)])
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    with_adapter = PeftModel.from_pretrained(base, tiny_chat / "adapter")
    with torch.no_grad():
        a = merged(input_ids=ids).logits
        b = with_adapter(input_ids=ids).logits
        c = AutoModelForCausalLM.from_pretrained(tiny_base)(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)  # the adapter changed the model


def test_finetune_reports_base_vs_fine_tuned(tiny_chat):
    evals = json.loads((tiny_chat / "eval.json").read_text())
    assert set(evals) == {"base", "fine_tuned"}
    for report in evals.values():
        assert {"addition", "subtraction", "reverse", "glossary"} <= set(report["tasks"])
        assert report["perplexity"] > 1
    card = (tiny_chat / "README.md").read_text()
    assert "base addition" in card and "fine_tuned addition" in card
    assert "trainable parameters" in card
    metrics = json.loads((tiny_chat / "metrics.json").read_text())
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]


def test_evaluate_cli_writes_the_contract_json(tiny_chat, tmp_path):
    out = tmp_path / "eval.json"
    run_cli("-m", "training.evaluate", "--model", str(tiny_chat), "--per-task", "5", "--json",
            str(out))
    report = json.loads(out.read_text())
    assert report["tasks"]["addition"]["n"] == 5
    for task in ("addition", "subtraction"):
        assert 0.0 <= report["tasks"][task]["accuracy"] <= 1.0
    assert isinstance(report["perplexity"], float) and report["perplexity"] > 1


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_killed_run_resumes_to_the_same_weights(stage, tiny_base, tmp_path):
    steps = "200"
    extra = ["--steps", steps, "--checkpoint-every", "10"]

    def command(out: Path) -> list[str]:
        if stage == "pretrain":
            shutil.copy(tiny_base / "recipe.yaml", out / "recipe.yaml")
            return ["-m", "training.pretrain", "--out", str(out), *extra]
        (out / "recipe.yaml").write_text(TEST_FINETUNE)
        return ["-m", "training.finetune", "--base", str(tiny_base), "--out", str(out),
                "--no-eval", *extra]

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    run_cli(*command(whole))

    proc = subprocess.Popen([sys.executable, *command(broken)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = broken / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint was written before the kill"
    killed_at = json.loads(state.read_text())["step"]
    if stage == "pretrain":  # the tokenizer travels with the checkpoint, so ids stay the same
        assert (broken / "checkpoint" / "tokenizer.json").is_file()
    assert 0 < killed_at < int(steps)
    assert not (broken / "model.safetensors").exists()  # nothing half-written

    resumed = run_cli(*command(broken), "--resume")
    assert f"{killed_at}/{steps}" in resumed.stderr  # the progress bar starts at the checkpoint
    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_data_parallel_run_keeps_replicas_identical(launcher, tiny_base, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    (out / "recipe.yaml").write_text(TEST_FINETUNE)
    bin_dir = Path(sys.executable).parent
    port = {"torchrun": "29517", "accelerate": "29518"}[launcher]
    launch = {
        "torchrun": [str(bin_dir / "torchrun"), "--nproc_per_node=2", f"--master_port={port}"],
        # --multi_gpu is accelerate's name for "several processes"; on CPU they use gloo
        "accelerate": [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes=2",
                       "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
                       f"--main_process_port={port}"],
    }[launcher]
    proc = subprocess.run(
        [*launch, "-m", "training.finetune", "--base", str(tiny_base), "--out", str(out),
         "--steps", "6", "--no-eval"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    sums = metrics["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_a_refinetune_removes_what_was_derived_from_the_old_weights(tiny_base, tiny_chat, tmp_path):
    out = tmp_path / "chat"
    shutil.copytree(tiny_chat, out)
    for derived in ("onnx/model.onnx", "gguf/chat-f16.gguf", "gguf/Modelfile", "eval-onnx.json"):
        (out / derived).parent.mkdir(exist_ok=True)
        (out / derived).write_text("made from the old weights")
    run_cli("-m", "training.finetune", "--base", str(tiny_base), "--out", str(out),
            "--steps", "2", "--no-eval")
    assert not (out / "onnx").exists() and not (out / "gguf").exists()
    assert not list(out.glob("eval*.json")) and (out / "recipe.yaml").is_file()
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


def test_a_diverged_run_stops_with_one_line_and_publishes_nothing(tiny_base, tmp_path):
    out = tmp_path / "diverged"
    out.mkdir()
    shutil.copy(tiny_base / "recipe.yaml", out / "recipe.yaml")
    proc = run_cli("-m", "training.pretrain", "--out", str(out), "--lr", "1e30",
                   "--checkpoint-every", "2", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training diverged at step" in proc.stderr.strip().splitlines()[-1]
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    if (out / "checkpoint" / "trainable.safetensors").exists():  # kept, and finite
        for name, t in load_file(out / "checkpoint" / "trainable.safetensors").items():
            assert torch.isfinite(t).all(), name


def test_out_equal_to_base_is_refused_in_any_spelling(tiny_base):
    before = (tiny_base / "model.safetensors").read_bytes()
    for spelling in (tiny_base, tiny_base.parent / ".." / tiny_base.parent.name / tiny_base.name):
        proc = run_cli("-m", "training.finetune", "--base", str(tiny_base), "--out", str(spelling),
                       "--steps", "2", check=False)
        assert proc.returncode == 2 and "is the input" in proc.stderr
    assert (tiny_base / "model.safetensors").read_bytes() == before


def test_resume_with_other_settings_is_refused(tiny_base, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    (out / "recipe.yaml").write_text(TEST_FINETUNE)
    base = ["-m", "training.finetune", "--base", str(tiny_base), "--out", str(out), "--no-eval",
            "--checkpoint-every", "2"]
    proc = subprocess.Popen([sys.executable, *base, "--steps", "400"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert state.exists()
    resumed = run_cli(*base, "--steps", "50", "--resume", check=False)
    assert resumed.returncode == 2
    assert "steps: 400 → 50" in resumed.stderr and not (out / "model.safetensors").exists()


def test_every_artifact_is_readable_by_others_under_umask_022(tiny_chat, tmp_path):
    # `docker run -v models/tiny-chat:/models/tiny-chat:ro` runs the app as another uid: a file
    # that only its owner can read (what mkstemp makes) breaks the documented deployment.
    # The fixtures ran under the umask tests/conftest.py sets (022), like a normal login shell.
    model = tmp_path / "tiny-chat"
    shutil.copytree(tiny_chat, model)
    run_cli("scripts/export_gguf.py", str(model), "--outtype", "q8_0")
    run_cli("scripts/export_onnx.py", str(model))
    run_cli("-m", "training.evaluate", "--model", str(model), "--runtime", "gguf", "--per-task",
            "2",
            "--json", str(model / "eval-gguf.json"))
    checked = 0
    for folder in (tiny_chat, model):
        for path in [folder, *folder.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            want = 0o755 if path.is_dir() else 0o644
            assert mode & want == want, f"{path.relative_to(folder.parent)}: {oct(mode)}"
            checked += 1
    assert checked > 20
    assert {p.name for p in model.rglob("*")} >= {"model.onnx", "tiny-chat-q8_0.gguf", "Modelfile",
                                                  "eval-gguf.json", "metrics.json", "README.md"}
