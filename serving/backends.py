"""One small interface to generate chat replies from a model folder, whatever the runtime.

    backend = load_backend("models/tiny-chat", "torch")   # or "onnx", "gguf"
    for piece in backend.stream(messages, max_new_tokens=64):
        print(piece, end="")

The web app and `training.evaluate` both talk to this interface and never to a runtime directly.
Backends hold no UI code, so importing this module stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

Messages = list[dict[str, str]]
RUNTIMES = ("torch", "onnx", "gguf")


class BackendError(Exception):
    """The model folder cannot be served by this runtime (missing export, bad files)."""


def sample_next(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else softmax sampling at the given temperature."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    return int(rng.choice(len(p), p=p / p.sum()))


class Backend:
    """Shared logic: chat template, stop tokens, incremental detokenisation, a lock.

    Subclasses implement `_token_stream(prompt_ids, max_new_tokens, temperature, seed)`, a
    generator of token ids.
    """

    runtime = "?"

    def __init__(self, model_dir: str | Path, tokenizer_dir: str | Path | None = None):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
        if self.tokenizer.chat_template is None:
            raise BackendError(f"{model_dir}: tokenizer has no chat template")
        self.stop_ids = {
            i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(i, int) and i >= 0 and i != self.tokenizer.unk_token_id
        }
        self.lock = threading.Lock()  # one generation at a time per loaded model

    @property
    def name(self) -> str:
        return f"{self.runtime}:{self.model_dir.name}"

    def prompt_ids(self, messages: Messages) -> list[int]:
        return list(self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False))

    def stream(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0,
               seed: int = 0) -> Iterator[str]:
        """Yield the reply as text pieces, stopping at the end-of-turn token."""
        with self.lock:
            ids: list[int] = []
            shown = ""
            for tok in self._token_stream(self.prompt_ids(messages), max_new_tokens, temperature, seed):
                if tok in self.stop_ids:
                    break
                ids.append(tok)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
                    continue
                yield text[len(shown):]
                shown = text
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > len(shown):  # flush a character left incomplete at the end
                yield text[len(shown):]

    def generate(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> str:
        return "".join(self.stream(messages, max_new_tokens, temperature, seed))

    def generate_batch(self, conversations: list[Messages], max_new_tokens: int = 32) -> list[str]:
        """Greedy replies for many conversations (backends may batch them)."""
        return [self.generate(m, max_new_tokens) for m in conversations]

    def _token_stream(self, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                      seed: int) -> Iterator[int]:
        raise NotImplementedError


class TorchBackend(Backend):
    """transformers + PyTorch, with its KV cache; batched greedy decoding for evaluation."""

    runtime = "torch"

    def __init__(self, model_dir: str | Path):
        super().__init__(model_dir)
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()

    def _token_stream(self, prompt_ids, max_new_tokens, temperature, seed):
        torch = self.torch
        rng = np.random.default_rng(seed)
        past = None
        x = torch.tensor([prompt_ids])
        for _ in range(max_new_tokens):
            # inference mode per step, not around the loop: a generator may be resumed on
            # another thread (Gradio does), and the mode belongs to the thread that set it
            with torch.inference_mode():
                out = self.model(input_ids=x, past_key_values=past, use_cache=True)
                logits = out.logits[0, -1].float().numpy()
            past = out.past_key_values
            tok = sample_next(logits, temperature, rng)
            yield tok
            x = torch.tensor([[tok]])

    def generate_batch(self, conversations, max_new_tokens=32):
        torch = self.torch
        tok = self.tokenizer
        tok.padding_side = "left"
        prompts = [self.prompt_ids(m) for m in conversations]
        width = max(map(len, prompts))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with self.lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=sorted(self.stop_ids), pad_token_id=pad)
        replies = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            replies.append(tok.decode(row[:cut], skip_special_tokens=True))
        return replies


def load_backend(model_dir: str | Path, runtime: str = "torch", gguf_file: str | Path | None = None) -> Backend:
    """Open a model folder with one runtime; a clear BackendError if it is not there.

    `gguf_file` picks one GGUF export (e.g. the q8_0 file); by default the folder's f16."""
    model_dir = Path(model_dir)
    if runtime == "torch":
        if not (model_dir / "config.json").exists():
            raise BackendError(f"{model_dir} holds no transformers model (config.json missing)")
        return TorchBackend(model_dir)
    if runtime == "onnx":
        from serving.onnx_backend import OnnxBackend

        return OnnxBackend(model_dir)
    if runtime == "gguf":
        from serving.gguf_backend import GgufBackend

        return GgufBackend(model_dir, gguf_file=gguf_file)
    raise BackendError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
