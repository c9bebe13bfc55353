"""The model calls of a KV-cached decode loop, shared by the engine and GRPO's rollout loop (rollout/hf.py)."""
from __future__ import annotations

import inspect

import torch


class ModelCall:
    """model(ids, mask, positions, cache) -> (logits of the last position, cache), with the keyword names this
    transformers version uses; the output layer runs for the last position only where the model allows it."""

    def __init__(self, model):
        self.model = model
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(core.forward).parameters
        self.keep_kw = "logits_to_keep" in params
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        # a Qwen-VL model: its M-RoPE positions come from the images' grids (get_rope_index)
        self.rope_index = getattr(getattr(core, "model", None), "get_rope_index", None)
        self.image_token_id = getattr(core.config, "image_token_id", None)
        self.head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
        self.video_token_id = getattr(core.config, "video_token_id", None)

    @property
    def reads_images(self) -> bool:
        return self.rope_index is not None and self.image_token_id is not None

    def image_inputs(self, ids, mask, images: dict) -> tuple[torch.Tensor, dict]:
        """(M-RoPE positions (3 x rows x width), the model's image and video keywords) of left-padded rows whose
        image and video tokens are already expanded; `images`: their pixel_values and image_grid_thw (videos:
        pixel_values_videos, video_grid_thw, Qwen2.5-VL's second_per_grid_ts), in row order."""
        types = ((ids == self.image_token_id) & mask.bool()).int()
        if "video_grid_thw" in images:
            types += 2 * ((ids == self.video_token_id) & mask.bool()).int()
        inputs = {k: v.to(ids.device) for k, v in images.items()}
        grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
        positions, _ = self.rope_index(ids, types, attention_mask=mask, **grids)
        return positions, {**inputs, "mm_token_type_ids": types}

    def __call__(self, ids, mask, positions, cache, **extra):
        kw = {"logits_to_keep": 1} if self.keep_kw else {}
        # a prompt's last positions reach the output layer as a strided slice (rows x 1 x width), which a matmul
        # cannot fold into one GEMM: it runs one per row over the whole vocabulary (12% of a CPU rollout's time)
        hook = self.head.register_forward_pre_hook(_contiguous) if ids.shape[-1] > 1 and self.head is not None else None
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{self.cache_kw: cache}, **kw, **extra)
        finally:
            if hook is not None:
                hook.remove()
        return out.logits[:, -1, :], out[self.cache_kw]


def _contiguous(module, args):
    return (args[0].contiguous(), *args[1:])


def next_positions(positions: torch.Tensor) -> torch.Tensor:
    """Each left-padded row's next position id (rows,): one past its last token's; under M-RoPE (3 x rows x
    width) one past the last token's largest axis, as generated text goes on on every axis."""
    last = positions[..., -1]
    return (last.amax(0) if last.dim() == 2 else last) + 1


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of rows padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
