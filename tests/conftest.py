"""Shared fixtures: the tiny model is built once per test session, through the real CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Files are made as under a normal login shell (umask 022): the tests check that every artifact
# comes out readable by other users, whatever umask the CI runner happens to have.
os.umask(0o022)
# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# Small enough to train in seconds; the same code path as the default recipe.
TEST_PRETRAIN = """\
pretrain:
  vocab_size: 512
  hidden_size: 64
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  intermediate_size: 128
  seq_len: 64
  batch_size: 16
  steps: 30
  lr: 0.003
  warmup: 5
  pydoc_chars: 200000
  fact_repeats: {addition: 1, subtraction: 1, reverse: 1, glossary: 1}
  checkpoint_every: 10
"""
TEST_FINETUNE = """\
finetune:
  steps: 20
  batch_size: 16
  lr: 0.003
  warmup: 5
  lora_r: 8
  lora_alpha: 16
  eval_per_task: 8
  checkpoint_every: 10
"""


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: int = 600):
    """Run `python <args>` from the repo root; return the CompletedProcess."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-base"
    out.mkdir()
    (out / "recipe.yaml").write_text(TEST_PRETRAIN)
    run_cli("-m", "training.pretrain", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_chat(tiny_base: Path) -> Path:
    out = tiny_base.parent / "tiny-chat"
    out.mkdir()
    (out / "recipe.yaml").write_text(TEST_FINETUNE)
    run_cli("-m", "training.finetune", "--base", str(tiny_base), "--out", str(out))
    return out

