"""`--task llama-chat`: a Llama-shaped chat model trained by scratch/nn alone, written as a
Hugging Face LlamaForCausalLM folder (see docs/nn.md, "From our framework to Ollama").

The data are the project's arithmetic conversations (chatdata.py) in ChatML, the chat format of
models/tiny-chat. The tokenizer is byte-level BPE of the project's own kind (tokenizer.py), its
few merges learned here on the training conversations: every digit stays its own token, and
"assistant", "What", " is" become one token each, which makes a conversation ~22 tokens
instead of ~39 with bytes alone (training time is proportional to it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scratch.nn import chatdata, hf
from scratch.nn import functional as F
from scratch.nn.chatdata import ChatBatches, render_conversation
from scratch.nn.llama import Generator, Llama, LlamaConfig
from scratch.nn.optim import AdamW, clip_grad_norm, cosine_lr
from scratch.nn.tokenizer import Tokenizer

DEFAULTS = {
    "steps": 2000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "weight_decay": 0.01,
    "n_merges": 32, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}
MAX_REPLY_TOKENS = 8  # the longest answer ("-99", "198") is 3 digits and <|im_end|>


def accuracy(gen: Generator, tok: Tokenizer, examples: list[chatdata.Example]
             ) -> tuple[float, list[str]]:
    """Held-out exact match of greedy replies from our own generation loop; and the replies."""
    replies = [tok.decode(ids) for ids in gen.greedy(
        [tok.chat_prompt(q) for q, _ in examples], MAX_REPLY_TOKENS, tok.eos_id)]
    hits = sum(chatdata.normalize_answer(r) == chatdata.normalize_answer(a)
               for r, (_, a) in zip(replies, examples))
    return hits / len(examples), replies


def train(settings: dict | None = None, seed: int = 0, eval_every: int = 0, eval_size: int = 400,
          progress: bool = True) -> dict:
    """Train; return the model, tokenizer, loss history and (eval_every > 0) a learning curve
    of held-out accuracy on a fixed sample of eval_size questions, measured off the clock."""
    s = {**DEFAULTS, **(settings or {})}
    rng = np.random.default_rng(seed)
    train_set, held_out = chatdata.split()
    tok = Tokenizer.train((render_conversation(q, a) for q, a in train_set), s["n_merges"])
    data = ChatBatches(tok, train_set)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"],
        num_key_value_heads=s["num_key_value_heads"],
        max_position_embeddings=s["max_position_embeddings"],
        tie_word_embeddings=s["tie_word_embeddings"])
    model = Llama(cfg, rng)
    params = model.parameters()
    opt = AdamW(params, lr=s["lr"], betas=(0.9, 0.95), weight_decay=s["weight_decay"])
    sample = [held_out[i] for i in np.random.default_rng(1).permutation(len(held_out))[:eval_size]]
    losses, curve, clock = [], [], 0.0
    order = rng.permutation(len(data))
    cursor = 0
    for step in tqdm(range(s["steps"]), desc="llama-chat", unit="step", disable=not progress,
                     leave=False):
        if eval_every and step % eval_every == 0:
            curve.append({"step": step, "seconds": round(clock, 1),
                          "held_out_sample_accuracy": accuracy(Generator(model), tok, sample)[0]})
        start = time.perf_counter()
        if cursor + s["batch_size"] > len(order):  # a new pass over the data, reshuffled
            order, cursor = rng.permutation(len(data)), 0
        ids, rows, targets = data.batch(order[cursor : cursor + s["batch_size"]])
        cursor += s["batch_size"]
        opt.lr = cosine_lr(step, s["steps"], s["lr"], warmup=s["warmup"], min_ratio=0.05)
        loss = F.cross_entropy(model(ids, rows), targets)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        losses.append(loss.item())
        clock += time.perf_counter() - start
    if eval_every:
        curve.append({"step": s["steps"], "seconds": round(clock, 1),
                      "held_out_sample_accuracy": accuracy(Generator(model), tok, sample)[0]})
    return {"model": model, "tokenizer": tok, "settings": s, "seconds": clock,
            "losses": losses, "curve": curve, "held_out": held_out}


def model_card(result: dict) -> str:
    s = result["settings"]
    return (
        "# scratch-chat\n\n"
        "A Llama-shaped chat model trained by scratch/nn (numpy only, no PyTorch) on the\n"
        "project's arithmetic conversations (\"What is A + B?\", \"What is A - B?\", A, B in "
        "0-99),\nin ChatML. Rebuild: `python -m scratch.nn --task llama-chat --out "
        "models/scratch-chat`.\n\n"
        f"- parameters: {result['parameters']:,}\n"
        f"- layers {s['num_hidden_layers']}, hidden {s['hidden_size']}, heads "
        f"{s['num_attention_heads']} (key/value heads {s['num_key_value_heads']}), "
        f"feed-forward {s['intermediate_size']}\n"
        f"- training: {s['steps']} steps of {s['batch_size']} conversations, "
        f"{result['seconds']:.0f} s\n"
        f"- held-out exact match (greedy, scratch/nn's own generation loop): "
        f"{result['test_accuracy']:.2%} of {result['held_out_questions']}\n"
    )


def run(out: str | Path, settings: dict | None = None, seed: int = 0, eval_every: int = 0,
        progress: bool = True) -> dict:
    """Train, score the held-out questions, write the model folder; return the numbers."""
    result = train(settings, seed, eval_every, progress=progress)
    model, tok = result["model"], result["tokenizer"]
    acc, _ = accuracy(Generator(model), tok, result["held_out"])
    report = {
        "task": "llama-chat", "test_accuracy": acc, "seconds": round(result["seconds"], 1),
        "parameters": model.num_parameters(), "held_out_questions": len(result["held_out"]),
        "final_loss": float(np.mean(result["losses"][-50:])), "curve": result["curve"],
        "settings": result["settings"], "seed": seed, "out": str(out),
    }
    hf.save_folder(out, model, tok, {
        "README.md": model_card({**result, **report}),
        "metrics.json": json.dumps(report, indent=2) + "\n"})
    return report
