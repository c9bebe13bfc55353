"""Rollouts with the policy itself: prompts left-padded into one batch, a KV-cached decode loop, sampling.

The loop is ours rather than transformers' `generate` for one measured reason: `generate` samples with
`torch.multinomial`, which on CPU draws one exponential variate per vocabulary entry per step (151,936 x
batch for Qwen) and took over half of a GRPO rollout's time in benchmarks/grpo_step.py. Inverse-CDF
sampling (cumulative sum, one uniform draw per row, binary search) draws from the same distribution with
one random number per row (CUDA keeps `torch.multinomial`, which is fast there). The prefill computes
logits for the last position only.
"""
from __future__ import annotations

import inspect

import torch

from . import Sampling, cut_at_stop


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), restricted by top-k and top-p; temperature 0 is
    greedy."""
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs    # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if probs.is_cuda:  # a fast kernel there
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=logits.shape[-1] - 1)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on every token already in the row (prompt included)."""
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


class HFRollout:
    name = "transformers"

    def __init__(self, model, pad_token_id: int, max_batch: int = 0):
        self.model, self.pad_id, self.max_batch = model, pad_token_id, max_batch
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(core.forward).parameters
        self._keep_kw = "logits_to_keep" in params
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x

    def sync_weights(self, model) -> None:
        """The policy generates itself: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[list[int]]:
        rows = [p for p in prompts for _ in range(n)]
        step = self.max_batch or len(rows)
        device = next(self.model.parameters()).device
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=device).manual_seed(sampling.seed)
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            out = []
            for start in range(0, len(rows), step):
                out += self._batch(rows[start:start + step], sampling, device, generator)
            return out
        finally:
            self.model.train(was_training)

    def _forward(self, ids, mask, positions, cache):
        kw = {"logits_to_keep": 1} if self._keep_kw else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_kw: cache}, **kw)
        return out.logits[:, -1, :], out[self._cache_kw]

    def _batch(self, rows: list[list[int]], sampling: Sampling, device, generator) -> list[list[int]]:
        from transformers import DynamicCache

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        stops = torch.tensor(sorted(sampling.stop_token_ids), dtype=torch.long, device=device)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        logits, cache = self._forward(ids, mask, positions, cache)
        seen = ids
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        generated = []
        for _ in range(sampling.max_tokens):
            if sampling.repetition_penalty != 1.0:
                logits = penalize_repeats(logits.float(), seen, sampling.repetition_penalty)
            token = sample_next(logits, sampling, generator)
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            generated.append(token)
            done |= torch.isin(token, stops)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            if sampling.repetition_penalty != 1.0:
                seen = torch.cat([seen, token[:, None]], dim=1)
            logits, cache = self._forward(token[:, None], mask, positions, cache)
        out = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in rows]
        stop_set = set(sampling.stop_token_ids)
        return [cut_at_stop(row, stop_set, sampling.max_tokens) for row in out]
