"""Batch encoded rows. Targets are shifted per sequence, so no position predicts across a boundary."""
from __future__ import annotations

import torch

from ..templates import IGNORE_INDEX


def _targets(labels: list[int]) -> list[int]:
    return labels[1:] + [IGNORE_INDEX]


def _sequences(rows: list) -> list[dict]:
    """Rows may be packed (a list of sequences): flatten them."""
    return [seq for r in rows for seq in (r if isinstance(r, list) else [r])]


def collate_padding_free(rows: list) -> dict:
    """All sequences in one row: ids, per-sequence position_ids, shifted targets, sequence lengths."""
    ids, pos, tgt, lens = [], [], [], []
    for r in _sequences(rows):
        n = len(r["input_ids"])
        ids += r["input_ids"]
        pos += range(n)
        tgt += _targets(r["labels"])
        lens.append(n)
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]),
            "targets": torch.tensor([tgt]), "seq_lens": torch.tensor(lens)}


def collate_padded(rows: list[dict], pad_id: int) -> dict:
    """Right-padded batch with an attention mask; padding positions have IGNORE_INDEX targets."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    tgt = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        tgt[i, :n] = torch.tensor(_targets(r["labels"]))
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "targets": tgt}


class ImageCollate:
    """A batch of vision-language rows: the text batch (padded or padding-free) plus the pixels and grids of its
    images in order, and mm_token_type_ids (1 at image tokens), from which Qwen-VL computes M-RoPE positions."""

    def __init__(self, collate, processing, image_pad_id: int):
        self.collate, self.processing, self.pad_id = collate, processing, image_pad_id

    def __call__(self, rows: list) -> dict:
        batch = self.collate(rows)
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.pad_id).int()
        sources = [s for seq in _sequences(rows) for s in seq.get("images", ())]
        if sources:
            batch.update(self.processing.batch(sources))
        return batch
