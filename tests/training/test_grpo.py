"""training/grpo.py, the GRPO loss written out, equals TRL's GRPOTrainer loss and gradient on
the same batch — with a KL penalty (beta > 0) and old log-probs that differ from the current
ones, so the clipping and the KL terms are exercised and the test can fail."""

from __future__ import annotations

import pytest
import torch

from training.grpo import group_advantages, grpo_loss, token_logps


def test_group_advantages_are_relative_to_the_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4)
    assert torch.allclose(adv[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]) / (0.57735 + 1e-4) * 0.5,
                          atol=1e-4)
    assert torch.equal(adv[4:], torch.zeros(4))  # every answer alike: nothing to learn
    assert torch.allclose(group_advantages(rewards, 4, scale=False)[:4],
                          torch.tensor([0.5, -0.5, -0.5, 0.5]))


@pytest.mark.parametrize("loss_type,normalize", [("dapo", "token"), ("grpo", "sequence")])
def test_equals_trls_loss_and_gradient(tmp_path, loss_type, normalize):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from training.tokenizer import train_tokenizer

    tok = train_tokenizer(["What is 1 + 2? 3. What is 5 + 4? 9."] * 30, 300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(tmp_path / "m")  # TRL loads its policy from a folder
    tok.save_pretrained(tmp_path / "m")
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, beta=0.04,
                      loss_type=loss_type, epsilon=0.2, num_generations=4,
                      per_device_train_batch_size=4, max_completion_length=6, temperature=0.7,
                      report_to=[], logging_steps=1, gradient_checkpointing=False)
    def no_reward(completions, **kw):
        return [0.0] * len(completions)

    trainer = GRPOTrainer(model=str(tmp_path / "m"), reward_funcs=[no_reward], args=args,
                          train_dataset=Dataset.from_list([{"prompt": "hi"}] * 4),
                          processing_class=tok)
    model = trainer.model

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, len(tok), (4, 5), generator=g)
    completion = torch.randint(3, len(tok), (4, 6), generator=g)
    completion_mask = torch.ones(4, 6, dtype=torch.long)
    completion_mask[1, 4:] = 0  # answers of different lengths
    completion_mask[3, 2:] = 0
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    advantages = group_advantages(rewards, 4)
    with torch.no_grad():  # "old" and reference log-probs that differ from the current ones
        logits = model(input_ids=torch.cat([prompt, completion], 1)).logits[:, 4:-1]
        current = token_logps(logits, completion, temperature=0.7)
        old = current + 0.3 * torch.randn(current.shape, generator=g)
        ref = current + 0.5 * torch.randn(current.shape, generator=g)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
              "completion_ids": completion, "completion_mask": completion_mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": completion_mask.sum()}

    model.train()
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets: no accumulation
    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    their_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    logits = model(input_ids=torch.cat([prompt, completion], 1)).logits[:, 4:-1]
    ours = grpo_loss(token_logps(logits, completion, temperature=0.7), old, advantages,
                     completion_mask, ref_logps=ref, beta=0.04, normalize=normalize)
    ours.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(their_grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the terms matter: without the KL penalty the loss is another number
    no_kl = grpo_loss(token_logps(logits, completion, 0.7), old, advantages, completion_mask,
                      normalize=normalize)
    assert abs(float(no_kl) - float(ours)) > 1e-4
