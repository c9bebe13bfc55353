"""The running batch of continuous batching: one left-padded KV cache whose rows come and go.

Every row's tokens end at the same column, so one decode step appends one column for all rows. Rows leave
by selecting the others' cache rows; new prompts are prefilled in a batch of their own and joined by padding
both caches on the left to the same width; columns that are padding in every row (left behind by a long
row that finished) are cut off. The attention mask marks the padding and the position ids count each row's
own tokens, so a row's logits do not depend on what else is in the batch: greedy decoding in any company
equals decoding the prompt alone.
"""
from __future__ import annotations

import torch

from .decode import ModelCall, left_pad, next_positions


class RunningBatch:
    def __init__(self, call: ModelCall, pad_id: int, device):
        self.call, self.pad_id, self.device = call, pad_id, device
        self.cache = None                     # a DynamicCache holding every row, or None when empty
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # the next position id of each row

    def __len__(self) -> int:
        return self.mask.shape[0]

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache()  # plain full-attention layers: sliding windows are masked by position

    def prefill(self, rows: list[list[int]], expand: list[int] | None = None, images: dict | None = None,
                **extra) -> torch.Tensor:
        """Add prompts to the batch; return the logits of their last positions (rows x vocabulary). With
        `expand`, the rows joined are rows[expand[0]], rows[expand[1]], ... (a prompt prefilled once for
        several completions). `images`: the rows' pixels (vision-language models), whose M-RoPE positions
        decide where each row's generated tokens go on: one past its largest position, on every axis."""
        ids, mask, positions = left_pad(rows, self.pad_id, self.device)
        if images is not None:
            positions, more = self.call.image_inputs(ids, mask, images)
            extra = {**extra, **more}
        logits, cache = self.call(ids, mask, positions, self._new_cache(), **extra)
        positions = next_positions(positions)
        if expand is not None and expand != list(range(len(rows))):
            index = torch.tensor(expand, dtype=torch.long, device=self.device)
            logits, mask, positions = logits[index], mask[index], positions[index]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
        self._join(cache, mask, positions)
        return logits

    def decode(self, tokens: torch.Tensor, **extra) -> torch.Tensor:
        """One step: append `tokens` (one per row); return the next logits (rows x vocabulary)."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits, self.cache = self.call(tokens[:, None], self.mask, self.positions[:, None], self.cache, **extra)
        self.positions = self.positions + 1
        return logits

    def keep(self, rows: list[int]) -> None:
        """Drop every row but `rows` (in that order), and the columns only they used."""
        if len(rows) == len(self):
            return
        if not rows:
            self.cache = None
            self.mask, self.positions = self.mask[:0, :0], self.positions[:0]
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        first = int(self.mask.index_select(0, index).any(dim=0).long().argmax())  # the first column in use
        self.mask, self.positions = self.mask[index, first:], self.positions[index]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]

    def _join(self, cache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, positions
            return
        # everything is built before anything is replaced: a failure (out of memory) leaves the batch as it was
        width = max(self.mask.shape[1], mask.shape[1])
        joined_mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        joined_positions = torch.cat([self.positions, positions])
        layers = [(torch.cat([_pad_left(old.keys, width, dim=2), _pad_left(new.keys, width, dim=2)]),
                   torch.cat([_pad_left(old.values, width, dim=2), _pad_left(new.values, width, dim=2)]))
                  for old, new in zip(self.cache.layers, cache.layers)]
        self.mask, self.positions = joined_mask, joined_positions
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys, layer.values = keys, values


def _pad_left(t: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
