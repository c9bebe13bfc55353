"""Batch encoded rows. Targets are shifted per sequence, so no position predicts across a boundary."""
from __future__ import annotations

import functools

import torch

from ..errors import UserError
from ..templates import IGNORE_INDEX
from .images import ImageError


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
    images and videos in order, and mm_token_type_ids (1 at image tokens, 2 at video tokens), from which Qwen-VL
    computes M-RoPE positions.

    A batch without images or videos gets one blank image in a sequence of its own (untrained, attending only to
    itself):
    the model then runs its vision tower on every batch, so that every process runs the same modules in the same
    order — ZeRO-3 and FSDP gather weights collectively module by module, DDP reduces the gradients of a trainable
    vision side — and the loss is unchanged."""

    def __init__(self, collate, processing, image_pad_id: int, span: tuple[int, int], sequences=None,
                 video_pad_id: int | None = None):
        self.collate, self.processing, self.pad_id, self.span = collate, processing, image_pad_id, span
        self.sequences = sequences or _sequences  # the batch's sequences in the order `collate` lays them out
        # (`collate` may be None where a caller collates itself and only calls add_images)
        self.video_pad_id = video_pad_id

    def __call__(self, rows: list) -> dict:
        return self.add_images(self.collate(rows), self.sequences(rows))

    def add_images(self, batch: dict, sequences: list[dict]) -> dict:
        """A collated batch with the pixels of its sequences' images and videos (in the batch's order), or a blank
        image."""
        sources = [s for seq in sequences for s in seq.get("images", ())]
        videos = [v for seq in sequences for v in seq.get("videos", ())]
        try:
            if sources:
                batch.update(self.processing.batch(sources))
            if videos:
                batch.update(self.processing.video.batch(videos))
        except ImageError as e:  # (a header that reads while the pixels do not: a file cut short)
            raise UserError(f"{e}: its size was read when the data was prepared, its pixels cannot be; replace or "
                            "remove the file") from None
        if not sources and not videos:
            batch = self._with_blank_image(batch)
        types = (batch["input_ids"] == self.pad_id).int()
        if videos:
            types += 2 * (batch["input_ids"] == self.video_pad_id).int()
        batch["mm_token_type_ids"] = types
        return batch

    @functools.cached_property
    def _blank(self) -> tuple[dict, torch.Tensor]:
        """The smallest image's pixels and token ids (vision start, its pads, vision end)."""
        from PIL import Image

        side = self.processing.patch * self.processing.merge
        pixels = self.processing.batch_of([Image.new("RGB", (side, side))])
        n = self.processing.tokens(pixels["image_grid_thw"][0].tolist())
        return pixels, torch.tensor([self.span[0], *[self.pad_id] * n, self.span[1]])

    def _with_blank_image(self, batch: dict) -> dict:
        pixels, ids = self._blank
        untrained = torch.full_like(ids, IGNORE_INDEX)
        if "seq_lens" in batch:  # padding-free: one more sequence
            batch = {**batch, "input_ids": torch.cat([batch["input_ids"], ids[None]], 1),
                     "position_ids": torch.cat([batch["position_ids"], torch.arange(len(ids))[None]], 1),
                     "targets": torch.cat([batch["targets"], untrained[None]], 1),
                     "seq_lens": torch.cat([batch["seq_lens"], torch.tensor([len(ids)])])}
        else:  # padded: one more row
            width = max(batch["input_ids"].shape[1], len(ids))
            grow = lambda t, fill: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)  # noqa: E731
            row = lambda t, fill: torch.nn.functional.pad(t, (0, width - len(t)), value=fill)[None]  # noqa: E731
            batch = {**batch, "input_ids": torch.cat([grow(batch["input_ids"], 0), row(ids, 0)]),
                     "attention_mask": torch.cat([grow(batch["attention_mask"], 0),
                                                  row(torch.ones_like(ids), 0)]),
                     "targets": torch.cat([grow(batch["targets"], IGNORE_INDEX), row(untrained, IGNORE_INDEX)])}
        return {**batch, **pixels}
