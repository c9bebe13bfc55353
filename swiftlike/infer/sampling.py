"""Choosing the next token, shared by the inference engine and GRPO's rollout loop (rollout/hf.py).

We sample ourselves rather than through transformers' `generate` for one measured reason: `generate` samples
with `torch.multinomial`, which on CPU draws one exponential variate per vocabulary entry per step (151,936 x
batch for Qwen) and took over half of a GRPO rollout's time in benchmarks/grpo_step.py. Inverse-CDF sampling
(cumulative sum, one uniform draw per row, binary search) draws from the same distribution with one random
number per row (CUDA keeps `torch.multinomial`, which is fast there). One uniform per row also lets the
engine give every request its own seeded generator, so a seeded request samples the same tokens whatever
else shares its batch.

`sampling` arguments are any object with `temperature`, `top_k` and `top_p` (rollout's `Sampling`, the
engine's `SamplingParams`).
"""
from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor, sampling) -> torch.Tensor:
    """softmax(logits / temperature), restricted to the top-k tokens and the top-p nucleus (temperature > 0)."""
    logits = logits.float()
    # shifted so the largest is 0, and the temperature kept where float32 holds it: a tiny one gives the greedy
    # one-hot, not inf / inf or 0 / 0 = NaN
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / max(sampling.temperature, 1e-6)
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs    # mass of the more likely tokens
        drop = before >= sampling.top_p
        drop[:, 0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32 kept none)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return probs


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row from `probs` (rows need not sum to 1) given one uniform in
    [0, 1) per row (`uniform` of shape (rows, 1)). The first token whose cumulative mass exceeds the draw: a
    token of probability 0 is never drawn, not even by a draw of exactly 0 (it could be one a grammar forbids)."""
    cdf = torch.cumsum(probs, dim=-1)
    u = uniform.to(device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def sample_next(logits: torch.Tensor, sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), restricted by top-k and top-p; temperature 0 is
    greedy. One generator draws for the whole batch (GRPO's rollout)."""
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = probabilities(logits, sampling)
    if probs.is_cuda:  # a fast kernel there
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device, dtype=probs.dtype)
    return draw(probs, u)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on every token already in the row (prompt included)."""
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def openai_penalties(logits: torch.Tensor, generated: list[int], params) -> torch.Tensor:
    """OpenAI's presence and frequency penalties and logit_bias on one row of logits (1 x vocab), in place:
    logit - frequency x count - presence x (count > 0) for each token generated so far, then + its bias."""
    if generated and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.unique(torch.tensor(generated, device=logits.device), return_counts=True)
        logits[0, ids] -= params.frequency_penalty * counts.to(logits.dtype) + params.presence_penalty
    if params.logit_bias:
        ids = torch.tensor([t for t, _ in params.logit_bias], device=logits.device)
        logits[0, ids] += torch.tensor([b for _, b in params.logit_bias], device=logits.device, dtype=logits.dtype)
    return logits
