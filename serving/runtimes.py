"""Which runtimes can serve a model folder, and opening a folder with one of them.

    backend = load_backend("models/tiny-chat", "gguf")

A new runtime is one module with a `Backend` subclass (see serving/backend.py) and one line in
RUNTIMES. Runtime modules are imported only when asked for, so a machine without onnxruntime
or llama.cpp can still serve with torch, and importing this registry stays light.
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
