"""Step costs on every device present, side by side: python bench/bench_device.py [--model DIR]

For each device torch can use here (the CPU; a CUDA GPU; Apple's MPS) at its `auto` precision:
- pretrain: optimizer steps of the default recipe's model (models/tiny-base/recipe.yaml sizes,
  batch 32 x 128 tokens) through the trainer's own step (training.trainer.take_step);
- fine-tune: LoRA steps (r 32, all linear layers) on 64 conversations of ~24 tokens;
- RL sampling: GRPO's generation, 8 prompts x 8 completions of 8 new tokens, batched;
- decode: tokens/s of one reply with the KV cache (what the chat app's torch backend does).
Without --model the model is the default recipe's architecture, freshly initialised (the cost
of a step does not depend on what the weights have learned); with --model DIR it is that folder
(e.g. models/smol-chat). Prints one table, with each device's speed relative to the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving import device  # noqa: E402
from training.trainer import LabelledLoss, TrainConfig, make_optimizer, take_step  # noqa: E402


def devices_here() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def load_model(model_dir: Path | None):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from training.pretrain import PretrainSettings, model_config

    if model_dir is not None:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                    use_safetensors=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(model_config(PretrainSettings(), 1024, 0, 1))


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Seconds per call: the median of `repeats` after `warmup` calls (the GPU synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def random_batch(vocab: int, rows: int, length: int):
    ids = torch.from_numpy(np.random.default_rng(0).integers(2, vocab, (rows * 4, length)))

    def get_batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        x = ids[idx]
        return {"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x)}

    return get_batch, len(ids)


def train_steps_per_second(model, placement, rows: int, length: int, repeats: int) -> float:
    """Optimizer steps per second through the trainer's step, on `placement`."""
    model.to(placement.device).train()
    cfg = TrainConfig(steps=10**6, lr=1e-4, warmup=1, batch_size=rows)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt, net, scaler = make_optimizer(params, cfg), LabelledLoss(model), placement.grad_scaler()
    get_batch, n = random_batch(model.config.vocab_size, rows, length)
    step = iter(range(10**6))
    return 1.0 / timed(lambda: take_step(net, opt, get_batch, n, cfg, next(step),
                                         placement=placement, scaler=scaler), repeats)


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=32, lora_alpha=32, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


@torch.inference_mode()
def sampled_tokens_per_second(model, placement, repeats: int) -> float:
    """GRPO's generation: 8 prompts x 8 samples of 8 new tokens, one padded batch."""
    model.to(placement.device).eval()
    prompts = torch.from_numpy(np.random.default_rng(1).integers(
        2, model.config.vocab_size, (64, 24))).to(placement.device)

    def sample():
        with placement.autocast():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                           max_new_tokens=8, min_new_tokens=8, do_sample=True, top_k=0,
                           pad_token_id=0)

    return 64 * 8 / timed(sample, max(2, repeats // 3), warmup=1)


@torch.inference_mode()
def decode_tokens_per_second(model, placement, tokens: int = 64) -> float:
    """One reply, greedy, with the KV cache: the torch backend's loop."""
    model.to(placement.device).eval()

    def reply():
        past, x = None, torch.tensor([[5, 6, 7, 8]], device=placement.device)
        with placement.autocast():
            for _ in range(tokens):
                out = model(input_ids=x, past_key_values=past, use_cache=True)
                past = out.past_key_values
                x = out.logits[:, -1:].argmax(-1)
        int(x[0, 0])  # the host reads each token, as a server does

    return tokens / timed(reply, 3, warmup=1)


def measure(where: str, model_dir: Path | None, repeats: int) -> dict:
    placement = device.resolve(where, "auto")
    print(f"measuring on {placement.describe()} ...", flush=True)
    row = {**placement.record()}
    pre = load_model(model_dir)
    row["pretrain_steps_per_s"] = train_steps_per_second(pre, placement, 32, 128, repeats)
    row["pretrain_tokens_per_s"] = row["pretrain_steps_per_s"] * 32 * 128
    lora = with_lora(load_model(model_dir))
    row["finetune_steps_per_s"] = train_steps_per_second(lora, placement, 64, 24, repeats)
    row["rl_sampled_tokens_per_s"] = sampled_tokens_per_second(lora, placement, repeats)
    row["decode_tokens_per_s"] = decode_tokens_per_second(load_model(model_dir), placement)
    return row


COLUMNS = [("pretrain_steps_per_s", "pretrain steps/s"), ("finetune_steps_per_s",
           "finetune steps/s"), ("rl_sampled_tokens_per_s", "RL sampled tok/s"),
           ("decode_tokens_per_s", "decode tok/s")]


def table(rows: list[dict]) -> str:
    cpu = rows[0]
    lines = ["| device | precision | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[k]:,.1f}" + (f" ({row[k] / cpu[k]:.1f}x)" if row is not cpu else "")
                 for k, _ in COLUMNS]
        lines.append(f"| {row['device']} | {row['precision']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a model folder (default: the default recipe's "
                                              "architecture, freshly initialised)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(where, args.model, args.repeats) for where in devices_here()]
    print(table(rows))
    if len(rows) == 1:
        print("only the CPU is present here: no GPU numbers are measured or claimed")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
