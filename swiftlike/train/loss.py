"""Causal-LM loss computed only where there is something to learn.

The model's decoder produces hidden states; full-vocabulary logits are formed only for positions
with a target, a chunk at a time, and recomputed in backward instead of being stored. With a
150k vocabulary that removes the largest tensor of a training step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..templates import IGNORE_INDEX


def _chunk_ce(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int = 1024) -> torch.Tensor:
    """Sum of token cross-entropies of `lm_head(hidden)` against `targets` (rows already selected)."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce, lm_head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_ce(lm_head, h, t)
    return total


def packed_attention_mask(seq_lens: torch.Tensor, dtype: torch.dtype, boolean: bool) -> torch.Tensor:
    """Block-diagonal causal mask (1, 1, L, L) for sequences concatenated in one row."""
    seq_ids = torch.repeat_interleave(torch.arange(len(seq_lens), device=seq_lens.device), seq_lens)
    n = seq_ids.shape[0]
    idx = torch.arange(n, device=seq_lens.device)
    allowed = (seq_ids[:, None] == seq_ids[None, :]) & (idx[:, None] >= idx[None, :])
    if boolean:
        return allowed[None, None]
    return torch.zeros((n, n), dtype=dtype, device=seq_lens.device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


class CausalLMLoss(nn.Module):
    """Wraps a (PEFT or plain) causal LM; forward returns the summed loss and the token count.

    Kept as a module so DistributedDataParallel hooks see the forward pass.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @property
    def causal_lm(self) -> nn.Module:
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    def forward(self, input_ids, targets, position_ids=None, attention_mask=None, seq_lens=None):
        lm = self.causal_lm
        impl = getattr(lm.config, "_attn_implementation", "sdpa") or "sdpa"
        if seq_lens is not None and "flash" not in impl:
            # flash-attention reads sequence borders from position_ids; sdpa/eager need the mask
            attention_mask = packed_attention_mask(seq_lens, lm.dtype, boolean=impl == "sdpa")
        hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state
        keep = targets != IGNORE_INDEX
        loss_sum = chunked_cross_entropy(lm.get_output_embeddings(), hidden[keep], targets[keep], self.chunk_size)
        return loss_sum, keep.sum()
