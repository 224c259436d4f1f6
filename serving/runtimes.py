"""Which runtimes can serve a model folder, and opening a folder with one of them.

    backend = load_backend("models/tiny-chat", "gguf")

A new runtime is one module with a `Backend` subclass (see serving/backend.py), one line in
REGISTRY, and its export in training/pipeline.py's EXPORTS (docs/architecture.md). Runtime
modules are imported only when asked for, so a machine without onnxruntime or llama.cpp can
still serve with torch, and importing this registry stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from serving.backend import Backend, BackendError

# runtime name → (module, class): what each runtime runs from the model folder is in its module
REGISTRY = {
    "torch": ("serving.torch_backend", "TorchBackend"),  # config.json + model.safetensors
    "onnx": ("serving.onnx_backend", "OnnxBackend"),  # onnx/model.onnx
    "gguf": ("serving.gguf_backend", "GgufBackend"),  # gguf/<name>-<type>.gguf
}
RUNTIMES = tuple(REGISTRY)
# Where a torch model runs (serving/device.py resolves these; named here, where no torch is
# imported, so that the flags cost nothing to a command that serves with llama.cpp).
DEVICES = "auto|cpu|cuda|cuda:N|mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


PRECISION_HELP = ("auto (default: fp32 on the CPU, bf16 autocast on GPUs that have it, else "
                  "fp16 with loss scaling), fp32, bf16 or fp16")


def device_help(what: str = "the model") -> str:
    """--device's help: the same words in a serving command and in a stage's settings field."""
    return (f"where {what} runs: {DEVICES} (default auto: a CUDA GPU, then Apple's MPS, then "
            "the CPU)")


def add_device_arguments(parser: Any, what: str = "the model") -> None:
    """--device and --precision, as a serving command that runs a torch model takes them
    (unset: auto). A training stage gets them from its settings' device/precision fields
    (training.stage.device_field)."""
    parser.add_argument("--device", help=device_help(what))
    parser.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)


def add_runtime_arguments(parser: Any) -> None:
    """Where each runtime runs: --device/--precision (torch), --gpu-layers (gguf)."""
    add_device_arguments(parser, "the torch runtime")
    parser.add_argument("--gpu-layers", type=int,
                        help="gguf: layers llama.cpp puts on a GPU (default: all where its build "
                             "has a GPU backend, else 0)")


def runtime_options(runtime: str, args: Any) -> dict[str, Any]:
    """The flags of add_runtime_arguments that `runtime` takes, as load_backend options."""
    if runtime == "torch":
        return {"device": args.device or "auto", "precision": args.precision or "auto"}
    if runtime == "gguf":
        return {"gpu_layers": args.gpu_layers}
    return {}


def load_backend(model_dir: str | Path, runtime: str = "torch", **options: Any) -> Backend:
    """Open a model folder with one runtime, or raise a BackendError that says what is missing.

    Options go to the runtime's class (e.g. gguf_file= picks one GGUF export of the folder)."""
    if runtime not in REGISTRY:
        raise BackendError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BackendError(f"{model_dir} is not a model folder; run: python -m training.pipeline")
    module, cls = REGISTRY[runtime]
    options = {k: v for k, v in options.items() if v is not None}
    return getattr(importlib.import_module(module), cls)(model_dir, **options)
