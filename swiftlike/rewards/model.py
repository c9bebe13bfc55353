"""A reward model trained with `wb rm` (LoRA or full checkpoint) used as a GRPO reward function."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


class RewardModelReward:
    """Scores prompt + completion with the checkpoint's own template, a batch at a time, padding-free."""

    __name__ = "reward_model"

    def __init__(self, path: str, batch_size: int = 16, torch_dtype: str = "auto"):
        from ..models.resolve import load_for_inference, read_args
        from ..train.dpo import RewardObjective

        ckpt = Path(path)
        if not ckpt.is_dir():
            raise UserError(f"--reward_model {path}: no such directory")
        args = read_args(path)
        if args.get("task") != "rm":
            raise UserError(f"--reward_model {path}: a checkpoint of `wb {args.get('task', 'sft')}`, not of `wb rm`")
        lora = (ckpt / "adapter_config.json").is_file()
        model, _, self.template = load_for_inference(adapters=path if lora else None, model="" if lora else path,
                                                     torch_dtype=torch_dtype)
        self.scorer = RewardObjective(model.requires_grad_(False))
        self.device = next(model.parameters()).device
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, completions: list[str], prompts: list[list[dict]], **_) -> list[float]:
        from ..data.collate import collate_padding_free

        out: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            rows = self.template.encode_batch([{"messages": [*p, {"role": "assistant", "content": c}]} for p, c in
                                               zip(prompts[start:start + self.batch_size],
                                                   completions[start:start + self.batch_size])])
            batch = {k: v.to(self.device) for k, v in collate_padding_free(rows).items()}
            out += self.scorer.scores(batch["input_ids"], batch["position_ids"], batch["seq_lens"]).tolist()
        return out
