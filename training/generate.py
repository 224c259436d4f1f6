"""Answers from a model in memory (transformers + PEFT), in batches: what the fine-tune's
learning curve, its self-distilled replies and the RL stage's sampling and scoring all use.

The served runtimes generate through serving/ (one request at a time, streamed); here the
model is the one being trained, and many questions go through one padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.backend import ChatEncoder, left_pad


@dataclass
class Reply:
    text: str
    finished: bool  # ended with the end-of-turn token (not cut off at max_new_tokens)


@torch.inference_mode()
def answer(model, tok, questions: list[str], n: int = 1, temperature: float = 0.0,
           max_new_tokens: int = 32, seed: int = 0, batch: int = 64,
           top_k: int = 0) -> list[list[Reply]]:
    """`n` replies to each question asked alone in the chat format (greedy at temperature 0,
    else sampled at that temperature from the full distribution, or from the `top_k` most
    likely tokens, reproducibly from `seed`)."""
    chat = ChatEncoder(tok)
    stop = sorted(t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
                  if isinstance(t, int) and t >= 0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    torch.manual_seed(seed)
    prompts = [chat.encode([{"role": "user", "content": q}]).ids for q in questions]
    flat = [p for p in prompts for _ in range(n)]
    out: list[Reply] = []
    where = getattr(model, "device", torch.device("cpu"))  # the prompts go where the model is
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": 1.0} \
        if temperature > 0 else {"do_sample": False}
    try:
        for i in range(0, len(flat), batch):
            ids, mask = left_pad(flat[i:i + batch], pad)
            gen = model.generate(input_ids=torch.from_numpy(ids).to(where),
                                 attention_mask=torch.from_numpy(mask).to(where),
                                 max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=pad, **sampling)
            for row in gen[:, ids.shape[1]:].tolist():
                cut = next((k for k, t in enumerate(row) if t in stop), None)
                out.append(Reply(tok.decode(row[:cut], skip_special_tokens=True),
                                 cut is not None))
    finally:
        model.train(was_training)
    return [out[i * n:(i + 1) * n] for i in range(len(questions))]
