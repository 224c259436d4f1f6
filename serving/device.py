"""Where a torch model runs and in what precision: one resolver for every stage and the torch
backend (`--device auto|cpu|cuda|cuda:N|mps`, `--precision auto|fp32|bf16|fp16`).

`auto` picks a CUDA GPU, then Apple's MPS, then the CPU. Precision `auto` is float32 on the CPU
(so CPU numbers stay what they were) and on MPS (not tested here: float32 is the safe choice;
pass --precision fp16 to try), bfloat16 autocast on a CUDA GPU that has it, float16 autocast
with a gradient scaler on older GPUs. Weights always stay float32: autocast runs the matmuls in
the low precision, so a folder trained on a GPU is the same float32 safetensors a CPU reads.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from serving.helpers import UsageError
from serving.runtimes import DEVICES, PRECISIONS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(?::(\d+))?)$")


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a forward pass runs in: nothing for fp32, else torch's autocast."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"device {name}, precision {self.precision}"

    def record(self) -> dict[str, str]:
        """What a stage's metrics and card record."""
        return {"device": str(self.device), "precision": self.precision}


CPU = Placement(torch.device("cpu"), "fp32")


def _torch_build() -> str:
    return f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")


def resolve_device(name: str) -> torch.device:
    """`name` as a device that exists here, or one line saying why not."""
    match = _DEVICE.match(name or "")
    if not match:
        raise UsageError(f"--device {name!r} is not one of {DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS is not available here; run with --device cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(match.group(2) or os.environ.get("LOCAL_RANK", "0"))
        if count == 0:
            raise UsageError(f"--device {name}: no CUDA GPU is visible ({_torch_build()}); "
                             "run with --device cpu")
        if index >= count:
            raise UsageError(f"--device {name}: there are {count} CUDA GPU(s) (cuda:0 to "
                             f"cuda:{count - 1}); run with --device cuda:0")
        return torch.device("cuda", index)
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise UsageError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve(device: str = "auto", precision: str = "auto") -> Placement:
    """The placement `--device` and `--precision` ask for, checked before any work."""
    where = resolve_device(device)
    return Placement(where, resolve_precision(precision, where))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of tensors on `device` (a no-op where they already are)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def on_cpu_for_saving(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model moved to the CPU while it is saved (float32, no device in the file), then back."""
    where = next(model.parameters()).device
    model.to("cpu")
    try:
        yield model
    finally:
        model.to(where)

