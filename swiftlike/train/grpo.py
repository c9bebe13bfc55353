"""GRPO and its current variants: group-relative advantages and the clipped surrogate loss.

The loss is written over (sequences, completion tokens) tensors with a mask, the layout of the papers (and of
TRL, which tests compare against token for token). The objective computes the policy's log-probs of the
completion tokens only (the output layer never sees prompt or padding positions).

Loss types and what a micro-batch's loss is normalised by (the trainer then averages over micro-batches
and ranks with the weight each reports):
  grpo     mean over each completion's tokens, then mean over completions        weight: completions
  bnpo     mean over the micro-batch's completion tokens                         weight: completions
  dr_grpo  sum over tokens / (completions x max_completion_length)               weight: completions
  dapo     sum over tokens / every completion token of the optimizer step         weight: tokens
"""
from __future__ import annotations

import torch

from ..config import GRPO_LOSS_TYPES as LOSS_TYPES, GRPO_SCALE_REWARDS as SCALE_REWARDS
from .loss import FrozenReference, as_reference

STD_EPS = 1e-4


def nan_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaNs (0 where fewer than two values)."""
    keep = ~torch.isnan(x)
    count = keep.sum() if dim is None else keep.sum(dim)
    mean = torch.nanmean(x) if dim is None else torch.nanmean(x, dim=dim, keepdim=True)
    sq = torch.where(keep, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum() if dim is None else sq.sum(dim)
    return torch.where(count > 1, total / (count - 1).clamp(min=1), torch.zeros_like(total)).sqrt()


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group",
                     batch_std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, zero-std flags) for rewards laid out group after group.

    advantage = reward - mean of its group, divided by (std + 1e-4) of its group (`group`), of the whole
    generation batch (`batch`; pass `batch_std` when the batch spans processes) or not at all (`none`).
    A completion no reward function could score (NaN) is left out of its group's statistics and gets 0.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {scale!r}")
    groups = rewards.view(-1, num_generations)
    mean = torch.nanmean(groups, dim=1, keepdim=True)
    std = nan_std(groups, dim=1)[:, None].expand_as(groups)
    if scale == "batch":
        std = (batch_std if batch_std is not None else nan_std(rewards)).expand_as(groups)
    advantages = groups - mean
    if scale != "none":
        advantages = advantages / (std + STD_EPS)
    zero_std = torch.isclose(std, torch.zeros_like(std)).reshape(-1)
    return torch.nan_to_num(advantages.reshape(-1), nan=0.0), zero_std


def per_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                   epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
                   ref_logps: torch.Tensor | None = None, importance_sampling_level: str = "token"):
    """The clipped surrogate per completion token, plus β·KL(π‖π_ref) (the k3 estimator).

    `importance_sampling_level="sequence"` is GSPO: one ratio per completion, the exp of its mean token
    log-ratio. Returns (loss (B, T), ratio (B, T) or (B, 1), kl (B, T) or None).
    """
    log_ratio = logps - old_logps
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))[:, None]
    elif importance_sampling_level != "token":
        raise ValueError(f"importance_sampling_level must be token or sequence, got {importance_sampling_level!r}")
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return loss, ratio, kl


def reduce_loss(loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int) -> torch.Tensor:
    """A micro-batch's summed loss, to be divided by its weight (see the module docstring)."""
    masked = loss * mask
    n = loss.shape[0]
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) * n
    if loss_type == "dr_grpo":
        return masked.sum() / max_completion_length
    if loss_type == "dapo":
        return masked.sum()
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def pad_by_sequence(values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat vector of per-token values, sequence after sequence -> (B, T) values and mask."""
    n, width = len(lengths), int(lengths.max()) if len(lengths) else 0
    seq = torch.repeat_interleave(torch.arange(n, device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    col = torch.arange(values.shape[0], device=values.device) - starts[seq]
    out = values.new_zeros((n, width))
    out[seq, col] = values
    mask = torch.zeros((n, width), dtype=values.dtype, device=values.device)
    mask[seq, col] = 1.0
    return out, mask


class GRPOObjective(FrozenReference, torch.nn.Module):
    """Completions of a micro-batch in one forward (rows right-padded); old log-probs are the sampling policy's
    (stored when a generation batch is reused, else the current log-probs detached); the reference is the
    adapter-disabled model (LoRA) or a frozen copy (full)."""

    def __init__(self, model, loss_type: str = "grpo", epsilon: float = 0.2, epsilon_high: float | None = None,
                 beta: float = 0.0, importance_sampling_level: str = "token", max_completion_length: int = 256,
                 ref_model=None, temperature: float = 1.0):
        super().__init__()
        from .loss import CausalLMLoss

        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
        self.policy = CausalLMLoss(model)
        self.ref = CausalLMLoss(ref_model) if ref_model is not None else None
        self.loss_type, self.beta, self.level = loss_type, beta, importance_sampling_level
        self.epsilon_low, self.epsilon_high = epsilon, epsilon if epsilon_high is None else epsilon_high
        self.max_completion_length = max_completion_length
        # log-probs of the distribution the completions were sampled from (policy, old and reference alike)
        self.temperature = temperature
        self.unit = "tokens" if loss_type == "dapo" else "completions"

    def weight(self, batch: dict) -> float:
        if self.loss_type == "dapo":
            return float(batch["completion_lens"].sum())
        return float(len(batch["completion_lens"]))

    def token_logps(self, module, input_ids, targets, position_ids, attention_mask, **images) -> torch.Tensor:
        """log p of every completion token (flat, sequence after sequence). `images`: a vision-language batch's
        pixels (grpo_trainer.collate_completions)."""
        from .loss import token_logps

        hidden = module.hidden_states(input_ids, position_ids, attention_mask, **images)
        keep = targets != -100
        return token_logps(module.causal_lm.get_output_embeddings(), hidden[keep], targets[keep], module.chunk_size,
                           module.softcap, self.temperature)

    @torch.no_grad()
    def reference_logps(self, input_ids, targets, position_ids, attention_mask, **images) -> torch.Tensor:
        if self.ref is not None:
            return self.token_logps(self.ref, input_ids, targets, position_ids, attention_mask, **images)
        with as_reference(self.policy.model):
            return self.token_logps(self.policy, input_ids, targets, position_ids, attention_mask, **images)

    @torch.no_grad()
    def policy_logps(self, input_ids, targets, position_ids, attention_mask, **images) -> torch.Tensor:
        return self.token_logps(self.policy, input_ids, targets, position_ids, attention_mask, **images)

    def forward(self, input_ids, targets, position_ids, attention_mask, completion_lens, advantages, old_logps=None,
                ref_logps=None, **images):
        flat = self.token_logps(self.policy, input_ids, targets, position_ids, attention_mask, **images)
        logps, mask = pad_by_sequence(flat, completion_lens)
        old = pad_by_sequence(old_logps, completion_lens)[0] if old_logps is not None else logps.detach()
        ref = None
        if self.beta != 0.0:
            if ref_logps is None:
                ref_logps = self.reference_logps(input_ids, targets, position_ids, attention_mask, **images)
            ref = pad_by_sequence(ref_logps, completion_lens)[0]
        loss, ratio, kl = per_token_loss(logps, old, advantages.to(logps.dtype), mask, epsilon_low=self.epsilon_low,
                                         epsilon_high=self.epsilon_high, beta=self.beta, ref_logps=ref,
                                         importance_sampling_level=self.level)
        total = reduce_loss(loss, mask, self.loss_type, self.max_completion_length)
        with torch.no_grad():
            adv = advantages[:, None]
            low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).expand_as(mask) * mask
            high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).expand_as(mask) * mask
            metrics = {"_tokens": float(mask.sum()), "clip_ratio/low": float(low.sum()),
                       "clip_ratio/high": float(high.sum()), "clip_ratio/region": float((low + high).sum())}
            if kl is not None:
                metrics["kl"] = float((kl * mask).sum())
        return total, len(completion_lens), metrics

    @staticmethod
    def finalize_metrics(means: dict) -> dict:
        """Token-level means (the trainer divides every sum by the same weight, so ratios of sums hold)."""
        tokens = max(means.pop("_tokens", 0.0), 1e-12)
        return {k: v / tokens for k, v in means.items()}
