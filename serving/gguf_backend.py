"""llama.cpp backend: the GGUF file of a model folder, run in-process through xllamacpp.

xllamacpp wraps llama.cpp's own server (its completion endpoint), called as a function: the
prompt goes in as token ids from the folder's own tokenizer and chat template (so every runtime
sees exactly the same input), and text pieces come back through a callback, the last one with
its finish reason and token counts.

llama.cpp's server always opens an HTTP listener beside the in-process API. It would answer
anyone on the machine (uncapped `/completion`, the model's path on `/v1/models`), so it is
bound to a Unix socket in a private folder that is deleted as soon as the server is up: the
process listens on no TCP port of its own, and nothing can reach the socket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from serving.backend import Backend, BackendError, Piece, Sampling, context_window

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
    raise BackendError(f"{model_dir} has no GGUF export; "
                       f"run: python scripts/export_gguf.py {model_dir}")


def gguf_context(tokenizer: Any) -> int:
    """llama.cpp's window per slot: the model's, at most 4096 tokens (its KV cache is float32,
    for exact parity with PyTorch). The in-browser site uses the same."""
    return min(context_window(tokenizer), 4096)


def gpu_offload(xl: Any, gpu_layers: int | None) -> tuple[int, str]:
    """How many layers llama.cpp puts on a GPU, and a line saying so: all where this build of
    llama.cpp has a GPU backend (CUDA, Metal, Vulkan...), none otherwise, or what was asked."""
    kinds = xl.ggml_backend_dev_type
    gpu_kinds = (kinds.GGML_BACKEND_DEVICE_TYPE_GPU, kinds.GGML_BACKEND_DEVICE_TYPE_IGPU)
    gpus = [d["description"] or d["name"] for d in xl.get_device_info() if d["type"] in gpu_kinds]
    if gpu_layers is not None and gpu_layers < 0:
        raise BackendError(f"--gpu-layers must be >= 0, got {gpu_layers}")
    if not gpus:
        if gpu_layers:
            raise BackendError(f"--gpu-layers {gpu_layers}: this llama.cpp build has no GPU "
                               "backend; run with --gpu-layers 0")
        return 0, "llama.cpp on the CPU (this build has no GPU backend)"
    layers = 999 if gpu_layers is None else gpu_layers  # 999: every layer the model has
    where = "every layer" if gpu_layers is None else f"{layers} layer(s)"
    return layers, f"llama.cpp with {where} on the GPU ({gpus[0]})" if layers else \
        f"llama.cpp on the CPU (--gpu-layers 0; GPU present: {gpus[0]})"


class GgufBackend(Backend):
    """Greedy or sampled generation with llama.cpp; f32 KV cache and no flash attention by
    default, so f32 files reproduce PyTorch's greedy tokens."""

    runtime = "gguf"

    def __init__(self, model_dir: str | Path, gguf_file: str | Path | None = None,
                 n_threads: int | None = None, n_ctx: int = 0, parallel: int = 1,
                 gpu_layers: int | None = None):
        super().__init__(model_dir)
        # llama.cpp's slots: `parallel` requests decoded together in one batch per step
        # (continuous batching), each with its own context.
        self.slots = threading.BoundedSemaphore(parallel)
        import xllamacpp as xl

        self.gguf_file = Path(gguf_file) if gguf_file else find_gguf(model_dir)
        if not self.gguf_file.is_file():
            raise BackendError(f"{self.gguf_file} does not exist")
        # One thread by default: on a small shared machine a second thread can stall badly.
        threads = n_threads or int(os.environ.get("MLZERO_GGUF_THREADS", "1"))
        p = xl.CommonParams()
        p.model.path = str(self.gguf_file)
        p.n_ctx = (n_ctx or self.context) * parallel
        p.n_parallel = parallel
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.n_gpu_layers, self.where = gpu_offload(xl, gpu_layers)
        p.cache_type_k = xl.ggml_type.GGML_TYPE_F32
        p.cache_type_v = xl.ggml_type.GGML_TYPE_F32
        p.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.warmup = False
        p.verbosity = int(os.environ.get("MLZERO_GGUF_VERBOSITY", "-1"))
        p.endpoint_metrics = p.endpoint_slots = p.endpoint_props = False
        p.api_keys = [secrets.token_hex(16)]  # and a key nobody knows, should it be reached
        private = Path(tempfile.mkdtemp(prefix="mlzero-llama-"))  # mode 0700
        p.hostnames = [str(private / "llama.sock")]
        try:
            self.server = xl.Server(p)
        except Exception as err:  # llama.cpp reports a bad file only as a failed init
            raise BackendError(f"llama.cpp could not load {self.gguf_file}: {err}") from None
        finally:
            shutil.rmtree(private, ignore_errors=True)  # the socket's path goes: unreachable

    @property
    def name(self) -> str:
        return f"gguf:{self.model_dir.name}/{self.gguf_file.name}"

    @property
    def context(self) -> int:
        return gguf_context(self.tokenizer)

    def _request(self, prompt_ids: list[int], sampling: Sampling, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt_ids, "n_predict": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "seed": sampling.seed, "top_k": 0, "min_p": 0.0, "cache_prompt": True, **extra}

    def _complete(self, req: dict[str, Any]) -> dict[str, Any]:
        res = self.server.handle_completions(req)
        if "error" in res:
            raise BackendError(f"llama.cpp: {res['error'].get('message', res['error'])}")
        return res

    def _generate(self, prompt_ids, sampling, emit):
        """Text pieces as llama.cpp produces them; it stops by itself at end-of-turn tokens."""
        failure: list[str] = []
        count = [0]  # a chunk per generated token; the last one reports the exact count

        def on_chunk(chunk: dict[str, Any]) -> bool:  # True asks llama.cpp to stop
            if "error" in chunk:
                failure.append(str(chunk["error"].get("message", chunk["error"])))
                return True
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason")
            if finish is not None:
                finish = "length" if finish == "length" else "stop"
                tokens = (chunk.get("usage") or {}).get("completion_tokens", count[0])
                if finish == "stop":  # llama.cpp counts the end-of-turn token; the others
                    tokens -= 1  # (and OpenAI) count the reply's tokens only
                return not emit(Piece(choice.get("text") or "", finish, tokens))
            count[0] += 1
            return not emit(Piece(choice.get("text") or "", completion_tokens=count[0]))

        self.server.handle_completions(self._request(prompt_ids, sampling, stream=True), on_chunk)
        if failure:
            raise BackendError(f"llama.cpp: {failure[0]}")

    def greedy_tokens(self, prompt_ids: list[int], max_new_tokens: int, banned: list[int] = (),
                      n_probs: int = 1) -> list[dict[str, Any]]:
        """Greedy continuation as log-prob entries ({"id", "logprob", "top_logprobs"}).

        `banned` ids get a -inf bias. Ban the special tokens (llama.cpp stops at end-of-generation
        ones) and byte tokens that are not whole UTF-8 characters (their ids are not reported),
        and every entry is exactly one token.
        """
        req = self._request(list(prompt_ids), Sampling(max_new_tokens), n_probs=n_probs,
                            logit_bias=[[int(i), False] for i in banned], cache_prompt=False)
        with self.slots:
            res = self._complete(req)
        return (res["choices"][0].get("logprobs") or {}).get("content") or []
