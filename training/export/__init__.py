"""Exporters: the trained model folder in the formats runtimes load (ONNX, GGUF, Ollama)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.helpers import UsageError, first_line, made_by_hint


def load_tokenizer(model_dir: str | Path) -> Any:
    """The folder's tokenizer as the runtimes load it, or a one-line UsageError before any
    export: an export whose tokenizer does not load (or has no chat template) cannot be served,
    and a broken tokenizer.json used to end the GGUF export in a JSONDecodeError traceback."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # transformers and tokenizers raise many types for a broken file
        raise UsageError(f"cannot load the tokenizer of {model_dir}: {first_line(err)}; "
                         f"run: {made_by_hint(model_dir)}") from None
    if tokenizer.chat_template is None:
        raise UsageError(f"the tokenizer of {model_dir} has no chat template; "
                         f"run: {made_by_hint(model_dir)}")
    return tokenizer
