"""The runtimes' device choices on this CPU-only machine: the torch backend runs where
--device/--precision say (float32 weights, autocast), and llama.cpp offloads layers to a GPU
only where its build has one, saying which it did."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import xllamacpp as xl

from serving.backend import BackendError
from serving.gguf_backend import gpu_offload
from serving.torch_backend import TorchBackend

QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


def fake_llama(*devices: str) -> SimpleNamespace:
    """xllamacpp as a build with these devices would describe itself."""
    kinds = xl.ggml_backend_dev_type
    kind = {"CPU": kinds.GGML_BACKEND_DEVICE_TYPE_CPU, "GPU": kinds.GGML_BACKEND_DEVICE_TYPE_GPU}
    return SimpleNamespace(ggml_backend_dev_type=kinds, get_device_info=lambda: [
        {"name": d, "description": f"{d} device", "type": kind[d]} for d in devices])


def test_llama_cpp_offloads_every_layer_where_a_gpu_exists():
    layers, line = gpu_offload(fake_llama("CPU", "GPU"), None)
    assert layers >= 999 and "every layer on the GPU (GPU device)" in line
    assert gpu_offload(fake_llama("CPU", "GPU"), 4)[0] == 4
    layers, line = gpu_offload(fake_llama("CPU", "GPU"), 0)
    assert layers == 0 and "on the CPU" in line


def test_llama_cpp_stays_on_the_cpu_without_a_gpu_build():
    assert gpu_offload(xl, None) == (0, "llama.cpp on the CPU (this build has no GPU backend)")
    with pytest.raises(BackendError, match="no GPU backend; run with --gpu-layers 0"):
        gpu_offload(xl, 8)
    with pytest.raises(BackendError, match=">= 0"):
        gpu_offload(fake_llama("GPU"), -1)


def test_torch_backend_runs_where_it_is_told(tiny_chat):
    fp32 = TorchBackend(tiny_chat, device="cpu")
    bf16 = TorchBackend(tiny_chat, device="auto", precision="bf16")
    assert fp32.where == "device cpu, precision fp32"
    assert bf16.where == "device cpu, precision bf16"
    assert all(p.dtype == torch.float32 and p.device.type == "cpu"
               for p in bf16.model.parameters())
    seen = []
    bf16.model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, a, out: seen.append(out.dtype))
    assert isinstance(bf16.generate(QUESTION, max_new_tokens=4), str)
    assert seen and set(seen) == {torch.bfloat16}
    assert isinstance(fp32.generate(QUESTION, max_new_tokens=4), str)


def test_torch_backend_refuses_an_absent_device(tiny_chat):
    with pytest.raises(BackendError, match="no CUDA GPU is visible"):
        TorchBackend(tiny_chat, device="cuda")


def test_every_command_that_runs_a_model_takes_the_device_flags():
    """The stages, the evaluation and both servers have --device/--precision; the servers and
    the evaluation --gpu-layers too (a stage's flags come from its settings' fields, training.
    stage.device_field, the servers' from serving/runtimes.py: the same help text)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    wanted = {"training.pretrain": ["--device", "--precision"],
              "training.finetune": ["--device", "--precision"],
              "training.rl": ["--device", "--precision"],
              "training.federated": ["--device", "--precision"],
              "training.images": ["--device", "--precision"],
              "training.evaluate": ["--device", "--precision", "--gpu-layers"],
              "serving.app": ["--device", "--precision", "--gpu-layers"],
              "serving.api": ["--device", "--precision", "--gpu-layers"]}
    for module, flags in wanted.items():
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120).stdout
        assert all(flag in out for flag in flags), (module, flags)


def test_evaluate_scores_on_the_device_it_is_told(tiny_chat, capsys):
    from training.evaluate import evaluate

    report = evaluate(tiny_chat, "torch", per_task=2, precision="bf16")
    assert report["where"] == "device cpu, precision bf16"
    assert "evaluating on device cpu, precision bf16" in capsys.readouterr().out
    assert all(0 <= r["accuracy"] <= 1 for r in report["tasks"].values())
