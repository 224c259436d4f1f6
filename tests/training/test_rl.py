"""The RL stage on the tiny fixture model: the reward, DPO's pairs, a few GRPO and DPO steps that
change the adapter and publish a model folder, and a resume that refuses other settings."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT, run_cli
from training import rl, tasks

RECIPE = """\
rl:
  task: addition
  steps: 3
  prompts_per_step: 4
  group: 8
  max_new_tokens: 4
  temperature: 0.7
  format_reward: 0.5
  lr: 0.002
  eval_n: 8
  eval_every: 3
  dpo_questions: 16
  checkpoint_every: 0
"""


@pytest.mark.parametrize("reply,answer,bonus,want", [
    ("46", "46", 0.0, 1.0), (" 46. ", "46", 0.0, 1.0), ("45", "46", 0.0, 0.0),
    ("45", "46", 0.25, 0.25), ("46", "46", 0.25, 1.25), ("forty six", "46", 0.25, 0.0),
    ("-7", "-7", 0.1, 1.1), ("46 + 1", "46", 0.1, 0.0),
])
def test_reward_is_exact_match_plus_an_optional_format_term(reply, answer, bonus, want):
    assert rl.reward(reply, answer, bonus) == pytest.approx(want)


def test_dpo_pairs_pair_a_right_answer_with_a_wrong_one(monkeypatch):
    examples = [tasks.Example("addition", "What is 1 + 2?", "3"),
                tasks.Example("addition", "What is 2 + 2?", "4"),
                tasks.Example("addition", "What is 3 + 3?", "6")]
    sampled = {"What is 1 + 2?": ["3", "4", "3", "5"], "What is 2 + 2?": ["4", "4", "4", "4"],
               "What is 3 + 3?": ["7", "8", "9", "1"]}
    monkeypatch.setattr(rl, "sample", lambda model, tok, questions, *a, **k:
                        [sampled[q] for q in questions])
    s = rl.RLSettings(task="addition", group=4, dpo_questions=3)
    pairs = rl.dpo_pairs(None, None, examples, s)
    assert len(pairs) == 1  # only the first question has both kinds
    pair = pairs[0]
    assert pair["prompt"][0]["content"] == "What is 1 + 2?"
    assert pair["chosen"][0]["content"] == "3" and pair["rejected"][0]["content"] in ("4", "5")


@pytest.mark.parametrize("method", ["grpo", "dpo"])
def test_a_few_steps_change_the_adapter_and_publish_a_model(tiny_chat, tmp_path, method,
                                                           monkeypatch):
    out = tmp_path / f"rl-{method}"
    out.mkdir()
    (out / "recipe.yaml").write_text(RECIPE)
    if method == "grpo":  # the command as users run it; the format term makes rewards differ
        run_cli("-m", "training.rl", "--base", str(tiny_chat), "--out", str(out), "--method",
                method, timeout=900)
    else:  # the fixture model never samples a right sum, so DPO's pairs are given here (their
        # building is tested above); the training, merge and publishing are the real ones
        train, _ = tasks.TASKS["addition"]()
        pairs = [{"prompt": [{"role": "user", "content": ex.question}],
                  "chosen": [{"role": "assistant", "content": ex.answer}],
                  "rejected": [{"role": "assistant", "content": str(int(ex.answer) + 1)}]}
                 for ex in train[:16]]
        monkeypatch.setattr(rl, "dpo_pairs", lambda *a, **k: pairs)
        monkeypatch.chdir(ROOT)
        rl.main(["--base", str(tiny_chat), "--out", str(out), "--method", method])
    report = json.loads((out / "rl.json").read_text())
    assert report["method"] == method and report["steps"] == 3
    assert set(report["before"]) >= {"accuracy", "pass_at_8"} and report["seconds"] > 0
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    assert (out / "rl.png").stat().st_size > 5000 and (out / "model.safetensors").is_file()
    evals = json.loads((out / "eval.json").read_text())["rl"]
    assert "sum3" in evals["tasks"] and "addition" in evals["tasks"]
    assert not (out / "checkpoint").exists()


def test_resume_with_other_settings_is_refused(tiny_chat, tmp_path):
    out = tmp_path / "rl-resume"
    out.mkdir()
    (out / "recipe.yaml").write_text(RECIPE.replace("steps: 3", "steps: 40")
                                     .replace("checkpoint_every: 0", "checkpoint_every: 1"))
    cmd = [sys.executable, "-m", "training.rl", "--base", str(tiny_chat), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "checkpoint").glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((out / "checkpoint").glob("checkpoint-*")), "no checkpoint before the kill"
    refused = run_cli("-m", "training.rl", "--base", str(tiny_chat), "--out", str(out),
                      "--resume", "--steps", "5", check=False)
    assert refused.returncode == 2 and "steps: 40 → 5" in refused.stderr
    assert not (out / "model.safetensors").exists()


def test_rl_is_a_recipe_section_the_pipeline_knows():
    from training.pipeline import TRAINING

    assert ("rl", "training.rl") in TRAINING
    assert Path(ROOT / "models" / "tiny-rl" / "recipe.yaml").is_file()
