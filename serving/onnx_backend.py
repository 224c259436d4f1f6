"""The onnxruntime backend: runs <model>/onnx/model.onnx (see training/export/onnx.py for its
inputs and outputs), feeding the KV cache back each step so decoding is incremental."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serving.backend import BackendError, Sampling, TokenBackend, sample_next
from serving.helpers import first_line


class OnnxBackend(TokenBackend):
    runtime = "onnx"

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        onnx_dir = Path(model_dir) / "onnx"
        if not (onnx_dir / "model.onnx").is_file():
            raise BackendError(f"{onnx_dir / 'model.onnx'} missing; "
                               f"run: python scripts/export_onnx.py {model_dir}")
        super().__init__(model_dir, tokenizer_dir=onnx_dir)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or int(os.environ.get("MLZERO_THREADS", "0"))
        try:
            self.session = ort.InferenceSession(str(onnx_dir / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for a broken graph
            raise BackendError(f"onnxruntime cannot load {onnx_dir / 'model.onnx'}: "
                               f"{first_line(err)}; "
                               f"run: python scripts/export_onnx.py {model_dir} --force") from None
        self.past_inputs = [i for i in self.session.get_inputs()
                            if i.name.startswith("past_key_values")]

    def _empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        # shape [batch, kv_heads, 0, head_dim]: kv_heads and head_dim are fixed in the graph
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]),
                                 np.float32) for i in self.past_inputs}

    def step(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray,
             cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder call: logits of the last position, and the grown cache."""
        outputs = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "position_ids": pos, **cache})
        return outputs[0][:, -1], dict(zip(cache, outputs[1:]))

    def _token_ids(self, prompt_ids, sampling: Sampling):
        rng = np.random.default_rng(sampling.seed)
        ids = np.array([prompt_ids], np.int64)
        n = ids.shape[1]
        logits, cache = self.step(ids, np.ones((1, n), np.int64), np.arange(n)[None],
                                  self._empty_cache(1))
        for _ in range(sampling.max_new_tokens):
            tok = sample_next(logits[0], sampling, rng)
            yield tok
            logits, cache = self.step(np.array([[tok]]), np.ones((1, n + 1), np.int64),
                                      np.array([[n]]), cache)
            n += 1

    def generate_batch(self, conversations, max_new_tokens=32):
        """Greedy decoding of many prompts at once, left-padded; padding is masked out."""
        ids, mask = self.batch_prompt(conversations)
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        b = len(ids)
        out: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, bool)
        with self.slots:
            logits, cache = self.step(ids, mask, pos, self._empty_cache(b))
            next_pos = pos[:, -1:] + 1
            for _ in range(max_new_tokens):
                tok = logits.argmax(-1)
                for r in range(b):
                    if not done[r]:
                        out[r].append(int(tok[r]))
                        done[r] = int(tok[r]) in self.stop_ids
                if done.all():
                    break
                mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
                logits, cache = self.step(tok[:, None].astype(np.int64), mask, next_pos, cache)
                next_pos = next_pos + 1
        return self.decode_replies(out)
