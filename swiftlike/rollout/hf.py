"""Rollouts with transformers' `generate`: prompts left-padded into one batch, KV-cached, sampled."""
from __future__ import annotations

import torch

from . import Sampling, cut_at_stop


class HFRollout:
    name = "transformers"

    def __init__(self, model, pad_token_id: int, max_batch: int = 0):
        self.model, self.pad_id, self.max_batch = model, pad_token_id, max_batch

    def sync_weights(self, model) -> None:
        """The policy generates itself: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[list[int]]:
        from transformers import GenerationConfig

        config = GenerationConfig(
            do_sample=sampling.temperature > 0, temperature=sampling.temperature if sampling.temperature > 0 else None,
            top_p=sampling.top_p, top_k=sampling.top_k, repetition_penalty=sampling.repetition_penalty,
            max_new_tokens=sampling.max_tokens, eos_token_id=list(sampling.stop_token_ids) or None,
            pad_token_id=self.pad_id, use_cache=True)
        rows = [p for p in prompts for _ in range(n)]
        step = self.max_batch or len(rows)
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        try:
            out = []
            for start in range(0, len(rows), step):
                out += self._batch(rows[start:start + step], config, sampling)
            return out
        finally:
            self.model.train(was_training)

    def _batch(self, rows: list[list[int]], config, sampling: Sampling) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        stops = set(sampling.stop_token_ids)
        return [cut_at_stop(row, stops, sampling.max_tokens) for row in out[:, width:].tolist()]
