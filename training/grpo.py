"""GRPO's loss in plain PyTorch: what TRL's GRPOTrainer computes, written out to be read.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath; used for DeepSeek-R1):
for each question, sample a *group* of G answers from the model, score each with a reward
(here: is the final answer right?), and push up the probability of the answers that scored
better than their group's average, down for the worse ones. No value network: the group's
mean reward is the baseline. tests/training/test_grpo.py checks this equals TRL's loss and
gradient on the same batch.

    advantages = group_advantages(rewards, group_size=8)
    loss = grpo_loss(logps, old_logps, advantages, mask, ref_logps=ref, beta=0.04)
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """How much better each answer did than the others for the same question.

    `rewards` holds G consecutive answers per question. An answer's advantage is its reward
    minus its group's mean, divided by the group's standard deviation (Bessel-corrected) when
    `scale`. A group where every answer scored the same gives zeros: nothing to learn there.
    """
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(-1)


def token_logps(logits: torch.Tensor, tokens: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    """log p(token) at each position. `logits[:, t]` are the model's scores for `tokens[:, t]`
    (shifted by one from the input, as the model predicts the next token), at the same
    temperature the answers were sampled with."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, ref_logps: torch.Tensor | None = None, beta: float = 0.0,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2,
              normalize: str = "token", kl_correction: bool = True) -> torch.Tensor:
    """The loss to minimise for one batch of sampled answers.

    logps      [B, T] log p(answer token) under the model being trained (with gradients)
    old_logps  [B, T] the same under the model that sampled the answers (no gradients)
    advantages [B]    from group_advantages
    mask       [B, T] 1 on answer tokens, 0 on padding
    ref_logps  [B, T] under a frozen reference model, for the KL penalty (beta > 0)

    PPO's clipped objective per token: the probability ratio new/old times the advantage, with
    the ratio clipped to [1 - epsilon_low, 1 + epsilon_high] so one batch cannot move the model
    far (with one update per batch the ratio is exactly 1 and this is plain REINFORCE with a
    group baseline, as in nanochat). Then, optionally, beta times an estimate of KL(model ||
    reference) per token: exp(ref - logp) - (ref - logp) - 1, always >= 0 (Schulman's "k3"),
    times the ratio when `kl_correction` (the answers came from the old model, so the estimate
    is reweighted to the current one; TRL's default).
    """
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    a = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)  # the pessimistic of the two
    if beta != 0.0:
        assert ref_logps is not None, "beta > 0 needs the reference model's log-probs"
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * (kl * ratio if kl_correction else kl)
    mask = mask.to(per_token.dtype)
    if normalize == "token":  # DAPO: every answer token weighs the same, long or short answer
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if normalize == "sequence":  # the original GRPO: each answer weighs the same
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    raise ValueError(f"normalize must be 'token' or 'sequence', not {normalize!r}")
