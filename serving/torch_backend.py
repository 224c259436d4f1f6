"""The PyTorch backend: transformers' model with its KV cache; batched greedy decoding for
evaluation. Weights load from safetensors only (a pickle checkpoint can run code when loaded).
It runs on the device and precision `serving.device` resolves (float32 weights, autocast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.backend import BackendError, Sampling, TokenBackend, sample_next
from serving.helpers import UsageError, first_line, made_by_hint, require_model


class TorchBackend(TokenBackend):
    runtime = "torch"

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "auto"):
        try:
            require_model(model_dir, made_by_hint(model_dir))
        except UsageError as err:
            raise BackendError(str(err)) from None
        super().__init__(model_dir)
        import torch
        from transformers import AutoModelForCausalLM

        from serving.device import resolve

        self.torch = torch
        try:
            self.placement = resolve(device, precision)
        except UsageError as err:
            raise BackendError(str(err)) from None
        self.where = self.placement.describe()
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              use_safetensors=True)
        except Exception as err:  # corrupt safetensors, bad config: many exception types
            raise BackendError(f"cannot load the model in {model_dir}: {first_line(err)}") from None
        self.model.to(self.placement.device).eval()

    def _token_ids(self, prompt_ids, sampling: Sampling):
        torch = self.torch
        rng = np.random.default_rng(sampling.seed)
        past = None
        device = self.placement.device
        x = torch.tensor([prompt_ids], device=device)
        # generation runs in one thread (see backend.in_thread), so these contexts hold for it
        with torch.inference_mode(), self.placement.autocast():
            for _ in range(sampling.max_new_tokens):
                out = self.model(input_ids=x, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = sample_next(out.logits[0, -1].float().cpu().numpy(), sampling, rng)
                yield tok
                x = torch.tensor([[tok]], device=device)

    def generate_batch(self, conversations, max_new_tokens=32):
        torch = self.torch
        ids, mask = self.batch_prompt(conversations)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = self.placement.device
        with self.slots, torch.inference_mode(), self.placement.autocast():
            out = self.model.generate(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=sorted(self.stop_ids), pad_token_id=pad)
        return self.decode_replies(out[:, ids.shape[1]:].tolist())
