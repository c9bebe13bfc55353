"""Decoding over a preallocated KV cache; on CUDA the decode step is recorded once as CUDA graphs and replayed.

With a growing (dynamic) cache a transformers decode loop launches every kernel of every layer from Python for
every token — hundreds of launches for one token of a batch — and grows the cache by copying it; on a GPU a
rollout of a small model is then bound by kernel launches, not by the card. Here the cache is transformers'
StaticCache, allocated once at its full length (prompt width + completion budget, rounded up to `BUCKET` so that
successive batches share one length and one cache object), the attention mask is a 2-D mask of that full length
whose slots are switched on as tokens are written, and the position ids move on by one: every decode step has the
same shapes and the same addresses. On CUDA, torch.compile's "cudagraphs" backend then records the traced step as
CUDA graphs and replays it per token. The prompt's forward (its width varies) runs eagerly.

Attention runs through sdpa while a static cache is in use: transformers builds its masks causal from the cache's
own count of written slots, whereas the padding-free kernels (wb_varlen, flash-attention) take the causal offset
from the key length, which a static cache fixes at its full size. The model's choice is restored afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .decode import ModelCall

BUCKET = 128  # cache lengths are multiples of this: batches whose lengths round alike share a cache and a graph
# CUDA graphs of the traced step, no inductor code generation. Measured on an H100, 2026-11-27 (GRPO, Qwen3-0.6B's
# shape, LoRA, bf16, 32 x 32 tokens): 1.13 s a step after the first (generation 0.86 s) against 3.02 s with the
# growing cache, first step 38 s; inductor's mode="reduce-overhead" (also accepted) ran past 80 s compiling that step
COMPILED = dict(backend="cudagraphs", dynamic=False)
CACHE_ATTENTION = ("sdpa", "eager")  # implementations whose masks follow a static cache's written slots


class StaticDecode:
    """`start(ids, mask, positions, max_tokens)` -> (logits of each row's last prompt token, `advance`), where
    `advance(tokens)` writes one token per row and returns the logits after it. `compile`: keyword arguments of
    torch.compile for the decode step (`COMPILED` on CUDA: CUDA graphs without inductor's code generation;
    dict(mode="reduce-overhead") adds inductor's fused kernels at a longer compile), or None to run it eagerly."""

    def __init__(self, model, call: ModelCall, compile: dict | None = None):
        self.model, self.call = model, call
        self._cache, self._shape = None, None
        self._step: Callable = torch.compile(self._decode, **compile) if compile else self._decode
        # these record CUDA graphs through cudagraph trees: each replay's output is overwritten by the next
        self._graphs = bool(compile) and (compile.get("mode") in ("reduce-overhead", "max-autotune") or
                                          compile.get("backend") == "cudagraphs" or
                                          bool((compile.get("options") or {}).get("triton.cudagraphs")))

    def start(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, max_tokens: int):
        rows, width = ids.shape
        length = -(-(width + max_tokens) // BUCKET) * BUCKET
        cache = self._cache_for(rows, length)
        full = torch.zeros(rows, length, dtype=mask.dtype, device=mask.device)
        full[:, :width] = mask
        logits = self.call(ids, full, positions, cache)[0]
        state = {"written": width, "positions": positions[:, -1:]}

        def advance(tokens: torch.Tensor) -> torch.Tensor:
            full[:, state["written"]] = 1
            state["written"] += 1
            state["positions"] = state["positions"] + 1
            if not self._graphs:
                return self._step(tokens[:, None], full, state["positions"])
            torch.compiler.cudagraph_mark_step_begin()
            return self._step(tokens[:, None], full, state["positions"]).clone()  # the next replay overwrites it

        return logits, advance

    def _cache_for(self, rows: int, length: int):
        from transformers import StaticCache

        if self._shape == (rows, length):
            self._cache.reset()  # the same object (and addresses) again: the recorded graphs stay valid
        else:
            self._cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._shape = (rows, length)
        return self._cache

    def _decode(self, tokens, mask, positions):
        return self.call(tokens, mask, positions, self._cache)[0]


@contextlib.contextmanager
def cache_attention(model):
    """The model attends through sdpa inside (unless it already uses sdpa or eager); its choice is restored."""
    configs = {id(c): c for c in (model.config, model.config.get_text_config())}.values()
    before = [(c, c._attn_implementation) for c in configs]
    try:
        for c, name in before:
            if name not in CACHE_ATTENTION:
                c._attn_implementation = "sdpa"
        yield
    finally:
        for c, name in before:
            c._attn_implementation = name
