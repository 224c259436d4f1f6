"""llama.cpp backend: the GGUF file of a model folder, run in-process through xllamacpp.

xllamacpp wraps llama.cpp's own server (the OpenAI-style completion endpoint) without HTTP. That
endpoint returns text, and token ids only inside log-prob entries, which the server holds back
while a token is an incomplete UTF-8 sequence. So this backend streams text pieces (overriding
`Backend.stream`), and `greedy_tokens` (used by parity tests) bans such byte tokens.

Prompts are the token ids of the folder's own tokenizer and chat template, so every runtime
sees exactly the same input.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.backends import Backend, BackendError, Messages

# Preference when a folder holds several exports: closest to the trained weights first.
PREFERRED = ("f16", "q8_0", "f32")


def find_gguf(model_dir: str | Path) -> Path:
    """The GGUF file of a model folder: <dir>/gguf/*-f16.gguf, else q8_0, else f32."""
    folder = Path(model_dir) / "gguf"
    files = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    for kind in PREFERRED:
        for f in files:
            if f.stem.endswith(f"-{kind}"):
                return f
    if files:
        return files[0]
    raise BackendError(f"{model_dir} has no GGUF export; run: python scripts/export_gguf.py {model_dir}")


class GgufBackend(Backend):
    """Greedy or sampled generation with llama.cpp; f32 KV cache and no flash attention by
    default, so f32 files reproduce PyTorch's greedy tokens."""

    runtime = "gguf"

    def __init__(self, model_dir: str | Path, gguf_file: str | Path | None = None,
                 n_threads: int | None = None, n_ctx: int = 0):
        super().__init__(model_dir)
        import xllamacpp as xl

        self.gguf_file = Path(gguf_file) if gguf_file else find_gguf(model_dir)
        if not self.gguf_file.is_file():
            raise BackendError(f"{self.gguf_file} does not exist")
        # One thread by default: on a small shared machine a second thread can stall badly.
        threads = n_threads or int(os.environ.get("MLZERO_GGUF_THREADS", "1"))
        p = xl.CommonParams()
        p.model.path = str(self.gguf_file)
        p.n_ctx = n_ctx or min(self.tokenizer.model_max_length, 4096)
        p.n_parallel = 1
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.cache_type_k = xl.ggml_type.GGML_TYPE_F32
        p.cache_type_v = xl.ggml_type.GGML_TYPE_F32
        p.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.warmup = False
        p.verbosity = int(os.environ.get("MLZERO_GGUF_VERBOSITY", "-1"))
        try:
            self.server = xl.Server(p)
        except Exception as err:  # llama.cpp reports a bad file only as a failed init
            raise BackendError(f"llama.cpp could not load {self.gguf_file}: {err}") from None

    @property
    def name(self) -> str:
        return f"gguf:{self.model_dir.name}/{self.gguf_file.name}"

    def _request(self, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                 seed: int, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt_ids, "n_predict": max_new_tokens, "temperature": temperature,
                "seed": seed, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "cache_prompt": True, **extra}

    def _complete(self, req: dict[str, Any]) -> dict[str, Any]:
        res = self.server.handle_completions(req)
        if "error" in res:
            raise BackendError(f"llama.cpp: {res['error'].get('message', res['error'])}")
        return res

    def generate(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> str:
        with self.lock:
            res = self._complete(self._request(self.prompt_ids(messages), max_new_tokens,
                                               temperature, seed))
        return res["choices"][0]["text"]

    def stream(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0,
               seed: int = 0) -> Iterator[str]:
        """Text pieces as llama.cpp produces them; it stops by itself at end-of-turn tokens."""
        req = self._request(self.prompt_ids(messages), max_new_tokens, temperature, seed, stream=True)
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        done = object()

        def on_chunk(chunk: Any) -> bool:
            pieces.put(chunk)
            return stop.is_set()  # True asks llama.cpp to stop generating

        def run() -> None:
            try:
                self.server.handle_completions(req, on_chunk)
            except Exception as err:  # surface it in the consumer's thread
                pieces.put(err)
            finally:
                pieces.put(done)

        with self.lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            try:
                while (chunk := pieces.get()) is not done:
                    if isinstance(chunk, Exception):
                        raise BackendError(f"llama.cpp: {chunk}")
                    if "error" in chunk:
                        raise BackendError(f"llama.cpp: {chunk['error']}")
                    text = chunk["choices"][0].get("text") or ""
                    if text:
                        yield text
            finally:
                stop.set()
                worker.join()

    def greedy_tokens(self, prompt_ids: list[int], max_new_tokens: int, banned: list[int] = (),
                      n_probs: int = 1) -> list[dict[str, Any]]:
        """Greedy continuation as log-prob entries ({"id", "logprob", "top_logprobs"}).

        `banned` ids get a -inf bias. Ban the special tokens (llama.cpp stops at end-of-generation
        ones) and byte tokens that are not whole UTF-8 characters (their ids are not reported),
        and every entry is exactly one token.
        """
        req = self._request(list(prompt_ids), max_new_tokens, 0.0, 0, n_probs=n_probs,
                            logit_bias=[[int(i), False] for i in banned], cache_prompt=False)
        with self.lock:
            res = self._complete(req)
        entries = (res["choices"][0].get("logprobs") or {}).get("content") or []
        return entries

    def _token_stream(self, prompt_ids, max_new_tokens, temperature, seed):
        raise NotImplementedError("GgufBackend streams text; use stream()")
