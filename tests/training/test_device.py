"""--device and --precision on a CPU-only machine: `auto` is the CPU in float32, absent devices
and unknown names are refused in one line before any work, and the chosen placement reaches the
model, the batches, the autocast of each forward pass, the optimizer state and the checkpoint —
bf16 and fp16 autocast run on the CPU too (the code path a GPU takes, minus the GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from serving import device
from serving.helpers import UsageError
from tests.conftest import TEST_PRETRAIN, run_cli
from training.trainer import TrainConfig, train


def test_auto_is_the_cpu_in_float32_here():
    assert not torch.cuda.is_available()
    placement = device.resolve("auto", "auto")
    assert placement == device.CPU
    assert placement.record() == {"device": "cpu", "precision": "fp32"}
    assert device.resolve("cpu", "bf16").precision == "bf16"


@pytest.mark.parametrize("name,words", [
    ("cuda", "no CUDA GPU is visible"), ("cuda:7", "no CUDA GPU is visible"),
    ("mps", "MPS is not available"), ("gpu", "is not one of"), ("cuda:x", "is not one of"),
    ("", "is not one of"),
])
def test_absent_or_unknown_devices_are_refused(name: str, words: str):
    with pytest.raises(UsageError, match=words) as err:
        device.resolve(name, "auto")
    assert "\n" not in str(err.value)


def test_unknown_precision_is_refused():
    with pytest.raises(UsageError, match="--precision 'fp8'"):
        device.resolve("cpu", "fp8")


@pytest.mark.parametrize("stage", ["training.pretrain", "training.finetune", "training.rl"])
@pytest.mark.parametrize("flags", [["--device", "cuda"], ["--device", "cuda:7"],
                                   ["--device", "tpu"], ["--precision", "fp8"]])
def test_a_stage_refuses_before_any_work(stage: str, flags: list[str], tmp_path):
    out = tmp_path / "model"
    base = ["--base", str(tmp_path)] if stage != "training.pretrain" else []
    proc = run_cli("-m", stage, "--out", str(out), *base, *flags, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "work started before the device was checked"


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64))


def batches(rows: int = 32, length: int = 12):
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 64, (rows, length)))

    def get_batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        x = ids[idx]
        return {"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x)}

    return get_batch, rows


def watch_first_linear(model: torch.nn.Module, seen: list) -> None:
    """Record the device and dtype of what the first projection computes in each forward."""
    layer = model.model.layers[0].self_attn.q_proj
    layer.register_forward_hook(lambda m, args, out: seen.append((args[0].device, out.dtype)))


@pytest.mark.parametrize("precision,low", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_low_precision_trains_and_checkpoints_float32(precision: str, low: torch.dtype,
                                                      tmp_path):
    model, seen = tiny_model(), []
    watch_first_linear(model, seen)
    get_batch, n = batches()
    placement = device.resolve("cpu", precision)
    cfg = TrainConfig(steps=6, lr=3e-3, warmup=2, batch_size=8, checkpoint_every=3, log_every=1)
    ckpt = tmp_path / "checkpoint"
    result = train(model, get_batch, n, cfg, ckpt, settings={"precision": precision},
                   placement=placement)
    assert all(np.isfinite(loss) for _, loss in result.history)
    assert result.history[-1][1] < result.history[0][1], result.history
    assert seen and all(d == torch.device("cpu") and t == low for d, t in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights left float32"
    saved = load_file(ckpt / "trainable.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


def test_a_checkpoint_resumes_with_another_precision(tmp_path):
    """Written under bf16 autocast, resumed in fp32: the resume is allowed (another machine may
    have another precision), starts at the checkpoint's step, and the optimizer state is back
    beside its parameters."""
    get_batch, n = batches()
    cfg = TrainConfig(steps=6, lr=3e-3, warmup=2, batch_size=8, checkpoint_every=3)
    ckpt = tmp_path / "checkpoint"
    first = tiny_model()
    cfg_short = TrainConfig(**{**cfg.__dict__, "steps": 4})
    train(first, get_batch, n, cfg_short, ckpt, settings={"precision": "bf16", "steps": 6},
          placement=device.resolve("cpu", "bf16"))
    assert (ckpt / "state.json").exists()
    again = tiny_model()
    result = train(again, get_batch, n, cfg, ckpt, resume=True,
                   settings={"precision": "fp32", "steps": 6}, placement=device.CPU)
    assert result.resumed_from == 3
    assert np.isfinite(result.history[-1][1])


def test_the_optimizer_state_lives_beside_its_parameters(tmp_path):
    from training.trainer import (
        TrainResult,
        _trainable,
        load_checkpoint,
        make_optimizer,
        save_checkpoint,
    )

    model = tiny_model()
    cfg = TrainConfig(steps=2, lr=1e-3, warmup=1, batch_size=8)
    opt = make_optimizer(_trainable(model), cfg)
    model(**batches()[0](np.arange(8))).loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "c", model, opt, 1, TrainResult())
    fresh = tiny_model()
    opt2 = make_optimizer(_trainable(fresh), cfg)
    assert load_checkpoint(tmp_path / "c", fresh, opt2, TrainResult()) == 1
    for p in _trainable(fresh).values():
        state = opt2.state[p]
        assert state["exp_avg"].device == p.device and state["exp_avg"].dtype == torch.float32
    assert torch.equal(next(fresh.parameters()), next(model.parameters()))


def test_pretrain_records_device_and_precision(tmp_path):
    """A real stage run under bf16 autocast: finite, float32 weights saved, device and
    precision in metrics.json and the card."""
    import json

    out = tmp_path / "tiny"
    out.mkdir()
    (out / "recipe.yaml").write_text(TEST_PRETRAIN.replace("steps: 30", "steps: 4")
                                     .replace("pydoc_chars: 200000", "pydoc_chars: 40000"))
    proc = run_cli("-m", "training.pretrain", "--out", str(out), "--precision", "bf16",
                   timeout=300)
    assert "running on device cpu, precision bf16" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["device"], metrics["precision"]) == ("cpu", "bf16")
    assert np.isfinite(metrics["final_train_loss"])
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert "bf16" in (out / "README.md").read_text()


def test_trl_gets_the_placement():
    """The RL stage hands TRL `use_cpu` only on the CPU, and autocast by the precision."""
    from training import rl

    cpu = rl.common_args(rl.RLSettings(), Path("ckpt"), device.CPU)
    assert (cpu["use_cpu"], cpu["bf16"], cpu["fp16"]) == (True, False, False)
    bf16 = rl.common_args(rl.RLSettings(), Path("ckpt"), device.resolve("cpu", "bf16"))
    assert (bf16["bf16"], bf16["fp16"]) == (True, False)
    gpu = rl.common_args(rl.RLSettings(), Path("ckpt"),
                         device.Placement(torch.device("cuda", 0), "bf16"))
    assert (gpu["use_cpu"], gpu["bf16"]) == (False, True)


def test_images_train_under_autocast_and_record_it():
    """Both image tasks at tiny sizes under bf16 autocast: finite, and the report says so."""
    from training import images

    drawn = images.generate(images.GenerateSettings(steps=6, batch_size=16, channels=[8, 16],
                                                    device="cpu", precision="bf16"), n_samples=4)
    report = drawn["report"]
    assert (report["device"], report["precision"]) == ("cpu", "bf16")
    assert np.isfinite(report["final_loss"]) and np.isfinite(drawn["samples"]).all()
    vit = images.classify(images.ClassifySettings(epochs=1, hidden_size=16, layers=1,
                                                  precision="fp16"))
    assert vit["precision"] == "fp16" and np.isfinite(vit["final_loss"])


def test_images_refuse_an_absent_device_before_any_work(tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("-m", "training.images", "--task", "classify", "--json", str(out),
                   "--device", "cuda", check=False, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no CUDA GPU" in proc.stderr and not out.exists()


def test_federated_clients_refuse_an_absent_device_before_ray_starts(tmp_path):
    proc = run_cli("-m", "training.federated", "--base", str(tmp_path), "--device", "cuda:3",
                   "--json", str(tmp_path / "fed.json"), check=False, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no CUDA GPU" in proc.stderr
