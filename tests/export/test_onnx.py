"""ONNX export checked in onnxruntime against PyTorch."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from serving.backend import Sampling
from serving.helpers import UsageError
from serving.onnx_backend import OnnxBackend
from serving.torch_backend import TorchBackend
from tests.conftest import run_cli
from training.export.onnx import export_onnx

PROMPTS = [
    [{"role": "user", "content": "What is 12 + 7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define loss."}],
    [{"role": "user", "content": "Reverse the word tiger."}],
]


@pytest.fixture(scope="module")
def exported(random_llama):
    run_cli("scripts/export_onnx.py", str(random_llama))
    return random_llama


def test_graph_passes_checker_and_carries_a_kv_cache(exported):
    path = exported / "onnx" / "model.onnx"
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    n_layers = json.loads((exported / "config.json").read_text())["num_hidden_layers"]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert sum(n.startswith("past_key_values.") for n in inputs) == 2 * n_layers
    assert sum(n.startswith("present.") for n in outputs) == 2 * n_layers
    assert (exported / "onnx" / "tokenizer.json").is_file()
    info = json.loads((exported / "onnx" / "export.json").read_text())
    assert info["max_abs_logit_diff_vs_torch"] <= 1e-4


def test_incremental_logits_match_pytorch(exported):
    torch_be, onnx_be = TorchBackend(exported), OnnxBackend(exported)
    ids = torch_be.prompt_ids(PROMPTS[1])
    with torch.no_grad():
        ref = torch_be.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    # feed the prompt in three chunks through the cache: every position's logits must agree
    cache = onnx_be._empty_cache(1)
    got, done = [], 0
    for cut in (5, 6, len(ids)):
        chunk = np.array([ids[done:cut]], np.int64)
        out = onnx_be.session.run(None, {"input_ids": chunk, "attention_mask": np.ones((1, cut),
                                                                                       np.int64),
                                         "position_ids": np.arange(done, cut)[None], **cache})
        got.append(out[0][0])
        cache = dict(zip(cache, out[1:]))
        done = cut
    assert np.abs(np.concatenate(got) - ref).max() <= 1e-4


def test_greedy_generation_matches_pytorch_token_for_token(exported):
    torch_be, onnx_be = TorchBackend(exported), OnnxBackend(exported)
    for messages in PROMPTS:
        ids = torch_be.prompt_ids(messages)
        a = list(torch_be._token_ids(ids, Sampling(24)))
        b = list(onnx_be._token_ids(ids, Sampling(24)))
        assert a == b
    # batched, left-padded decoding gives the same replies as one-at-a-time decoding
    assert onnx_be.generate_batch(PROMPTS, 16) == [onnx_be.generate(m, 16) for m in PROMPTS]


def test_bad_inputs_give_one_line_errors(exported, tmp_path):
    proc = run_cli("scripts/export_onnx.py", str(tmp_path), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "holds no finished model" in proc.stderr
    proc = run_cli("scripts/export_onnx.py", str(exported), check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    weird = tmp_path / "gpt2ish"
    shutil.copytree(exported, weird, ignore=shutil.ignore_patterns("onnx"))
    cfg = json.loads((weird / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (weird / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="unsupported architecture"):
        export_onnx(weird)
    assert not (weird / "onnx").exists()
