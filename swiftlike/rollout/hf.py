"""Rollouts with the policy itself: prompts left-padded into one batch, a KV-cached decode loop, sampling.

The sampling (inverse-CDF on CPU: why, in infer/sampling.py), the model call and the left padding are the
inference engine's own (swiftlike/infer/); what is GRPO's here is the loop over one fixed batch with one
generator, completions cut after (and keeping) their stop token. The KV cache is either transformers' growing
DynamicCache or a static one whose decode step a CUDA graph replays (infer/static_cache.py; `static_cache`).
"""
from __future__ import annotations

import contextlib

import torch

from ..data.images import cat_images
from ..infer.decode import ModelCall, left_pad, next_positions
from ..infer.sampling import penalize_repeats, sample_next
from ..infer.static_cache import EAGER, GRAPH, StaticDecode, cache_attention
from ..models.compiled import uncompiled
from ..models.kernels import unfused
from ..models.lora_compute import adapters_cast_once
from . import Sampling, cut_at_stop

__all__ = ["HFRollout", "penalize_repeats", "sample_next"]
CUDA_DECODE: str | dict = GRAPH  # how the static cache's decode step runs on CUDA unless told (benchmarks vary it)


class HFRollout:
    name = "transformers"

    def __init__(self, model, pad_token_id: int, max_batch: int = 0, synced: bool = False,
                 static_cache: bool | None = None, decode: str | dict | None = None):
        """`synced`: every rank runs the same number of decode steps (until all are done), as a model sharded
        by ZeRO-3 or FSDP needs: each forward gathers weights from every rank. `static_cache`: decode over a
        preallocated cache (None: on CUDA unless synced), its decode step run as `decode` says
        (infer/static_cache.py: "graph", captured as a CUDA graph, the default on CUDA unless synced; "eager",
        the default elsewhere; or torch.compile's keywords). Prompts with images always use the growing cache."""
        self.model, self.pad_id, self.max_batch, self.synced = model, pad_token_id, max_batch, synced
        self._call = ModelCall(model)
        graphs = next(model.parameters()).is_cuda and not synced  # the static cache's and CUDA graphs' default
        if static_cache is None:
            static_cache = graphs
        if decode is None:
            decode = CUDA_DECODE if graphs else EAGER
        self.static = StaticDecode(model, self._call, decode) if static_cache else None

    def sync_weights(self, model) -> None:
        """The policy generates itself: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling,
                 images: list[dict | None] | None = None) -> list[list[int]]:
        """n completions per prompt; `images`: each prompt's pixels (vision-language models), or None."""
        rows = [p for p in prompts for _ in range(n)]
        pixels = [i for i in (images or [None] * len(prompts)) for _ in range(n)]
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
                out += self._batch(rows[start:start + step], sampling, device, generator,
                                   [i for i in pixels[start:start + step] if i is not None])
            return out
        finally:
            self.model.train(was_training)

    def _all_done(self, done: torch.Tensor) -> bool:
        finished = torch.tensor([int(bool(done.all()))])
        if self.synced:
            import torch.distributed as dist

            dist.all_reduce(finished, op=dist.ReduceOp.MIN)
        return bool(finished)

    def _batch(self, rows: list[list[int]], sampling: Sampling, device, generator, images: list[dict]
               ) -> list[list[int]]:
        ids, mask, positions = left_pad(rows, self.pad_id, device)
        stops = torch.tensor(sorted(sampling.stop_token_ids), dtype=torch.long, device=device)
        with self.decoding(ids, mask, positions, sampling.max_tokens, images) as (logits, advance):
            seen = ids
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            generated = []
            for step in range(sampling.max_tokens):
                if sampling.repetition_penalty != 1.0:
                    logits = penalize_repeats(logits.float(), seen, sampling.repetition_penalty)
                token = sample_next(logits, sampling, generator)
                token = torch.where(done, torch.full_like(token, self.pad_id), token)
                generated.append(token)
                done |= torch.isin(token, stops)
                if self._all_done(done) or step + 1 == sampling.max_tokens:  # (no forward for a token never used)
                    break
                if sampling.repetition_penalty != 1.0:
                    seen = torch.cat([seen, token[:, None]], dim=1)
                logits = advance(token)
        out = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in rows]
        stop_set = set(sampling.stop_token_ids)
        return [cut_at_stop(row, stop_set, sampling.max_tokens) for row in out]

    @contextlib.contextmanager
    def decoding(self, ids, mask, positions, max_tokens: int, images: list[dict] | None = None):
        """(the logits after each row's prompt, `advance(tokens)` -> the logits after one more token per row) of
        left-padded rows, over the static cache (prompts with images: the growing one)."""
        # (--torch_compile's layer graphs are for training's shapes; LoRA adapters cast to the stream's dtype once,
        # unless sharded weights are gathered inside each forward)
        cast = contextlib.nullcontext() if self.synced else adapters_cast_once(self.model)
        with uncompiled(self.model), cast:
            if self.static is not None and not images:
                # transformers' kernels for a step torch.compile compiles (it cannot read Liger's Triton kernels)
                kernels = unfused(self.model) if isinstance(self.static.decode, dict) else contextlib.nullcontext()
                with cache_attention(self.model), kernels:
                    yield self.static.start(ids, mask, positions, max_tokens)
            else:
                yield self._growing(ids, mask, positions, images or [])

    def _growing(self, ids, mask, positions, images: list[dict]):
        """(the prompt's last logits, `advance`) over a DynamicCache that grows by one slot per token."""
        from transformers import DynamicCache

        cache = DynamicCache(config=getattr(self.model, "config", None))
        extra = {}
        if images:  # M-RoPE positions from the images' grids; decoding goes on one past each row's largest
            positions, extra = self._call.image_inputs(ids, mask, cat_images(images))
        logits, cache = self._call(ids, mask, positions, cache, **extra)
        state = {"mask": mask, "positions": next_positions(positions)[:, None] - 1, "cache": cache}

        def advance(token: torch.Tensor) -> torch.Tensor:
            state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
            state["positions"] = state["positions"][:, -1:] + 1
            logits, state["cache"] = self._call(token[:, None], state["mask"], state["positions"], state["cache"])
            return logits

        return logits, advance
