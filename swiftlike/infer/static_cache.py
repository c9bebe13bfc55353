"""Decoding over a preallocated KV cache; on CUDA the decode step is captured once as a CUDA graph and replayed.

With a growing (dynamic) cache a transformers decode loop launches every kernel of every layer from Python for
every token — hundreds of launches for one token of a batch — and grows the cache by copying it; on a GPU a
rollout of a small model is then bound by kernel launches, not by the card. Here the cache is transformers'
StaticCache, allocated once at its full length (prompt width + completion budget, rounded up to `BUCKET` so that
successive batches share one length and one cache object). The decode step's inputs live in buffers kept with
the cache: the next tokens, the position ids (moved on by one in place) and a 2-D attention mask of the cache's
full length whose slots are switched on as tokens are written. Every decode step then has the same shapes and
reads the same addresses, and the step itself moves the cache on (the cache counts its written slots in a device
tensor), so one recording of it serves every token of every batch of that shape.

How the step runs (`decode`):
- "graph" (the CUDA default): the eager step is captured as a CUDA graph (`accel.record_graph`) at the second
  token of a cache (the first runs eagerly, on a side stream, as capture asks, and is checked for what a graph
  cannot hold: reads of device values on the host, boolean-mask indexing, copies between devices, tensors made
  from Python data, cache layers that count in Python, as sliding-window layers do) and replayed for every later
  token.
  Weights, cache and buffers are read in place: the optimizer's in-place updates between rollouts are seen,
  nothing is copied per token and no compiler runs.
  A step that cannot be captured (or whose capture fails) runs eagerly, said once. Parameters moved to new
  addresses (a model reloaded or moved) are noticed at the next batch and the step checked and captured again.
  What the graph also freezes, unchecked: the model's mode and its adapters' state (enabled, merged), as they are
  while rollouts decode (eval mode, the policy's adapter).
- "eager": the same step launched from Python each token (other devices).
- a dict: torch.compile's keywords for the step (dict(backend="cudagraphs") or dict(mode="reduce-overhead"):
  CUDA graphs through torch.compile, kept for comparison; measured on an H100 on 2026-11-27, the "cudagraphs"
  backend's first step took 38 s and, by its source, copies every weight and the cache into the graph's own
  inputs at each replay, since it does not treat parameters as static; inductor's ran past 80 s compiling).

Attention runs through sdpa while a static cache is in use: transformers builds its masks causal from the cache's
own count of written slots, whereas the padding-free kernels (wb_varlen, flash-attention) take the causal offset
from the key length, which a static cache fixes at its full size. The model's choice is restored afterwards.
"""
from __future__ import annotations

import contextlib
import functools
from collections import Counter
from typing import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .. import accel
from .decode import ModelCall

BUCKET = 128  # cache lengths are multiples of this: batches whose lengths round alike share a cache and a graph
GRAPH, EAGER = "graph", "eager"
CACHE_ATTENTION = ("sdpa", "eager")  # implementations whose masks follow a static cache's written slots
# what a recorded graph cannot hold: a device value read on the host (`.item()`, `if tensor:`, `nonzero`), or a
# tensor made from Python data (a host-to-device copy on CUDA; its value frozen in the graph)
HOST_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select", "unique",
                      "lift_fresh", "lift_fresh_copy"})
Step = Callable[[], torch.Tensor]
COUNTS: Counter = Counter()  # this process's captures, replays and eager decode steps (benchmarks and tests read)


class StaticDecode:
    """`start(ids, mask, positions, max_tokens)` -> (logits of each row's last prompt token, `advance`), where
    `advance(tokens)` writes one token per row and returns the logits after it. `decode`: "graph", "eager" or
    torch.compile's keywords (module docstring). `record(step, device)` captures `step` and returns a function that
    replays it and returns its output (`accel.record_graph`; tests substitute a CPU stand-in)."""

    def __init__(self, model, call: ModelCall, decode: str | dict = EAGER,
                 record: Callable[[Step, torch.device], Step] | None = None):
        if not isinstance(decode, dict) and decode not in (GRAPH, EAGER):
            raise ValueError(f"decode: {decode!r} is not 'graph', 'eager' or a dict of torch.compile keywords")
        self.model, self.call, self.decode = model, call, decode
        self.record = record or accel.record_graph
        self._cache = self._shape = self._inputs = None
        self._replay, self._addresses, self._blocked, self._said = None, None, None, set()
        self._step: Callable = torch.compile(self._decode, **decode) if isinstance(decode, dict) else self._decode
        # compiled modes that record CUDA graphs through cudagraph trees: each replay's output is overwritten
        self._tree = isinstance(decode, dict) and (decode.get("mode") in ("reduce-overhead", "max-autotune") or
                                                   decode.get("backend") == "cudagraphs" or
                                                   bool((decode.get("options") or {}).get("triton.cudagraphs")))

    def start(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, max_tokens: int):
        rows, width = ids.shape
        length = -(-(width + max_tokens) // BUCKET) * BUCKET
        cache = self._cache_for(rows, length, mask.dtype, ids.device)
        tokens, full, last = self._inputs
        full.zero_()
        full[:, :width] = mask
        logits = self.call(ids, full, positions, cache)[0]
        last.copy_(positions[:, -1:])
        if self._replay is not None and self._addresses != self._tensor_addresses():
            self._replay = self._blocked = None  # the weights moved (the graph would read where they were): again
        written = width

        def advance(new: torch.Tensor) -> torch.Tensor:
            nonlocal written
            full[:, written] = 1
            written += 1
            last.add_(1)
            tokens.copy_(new[:, None])
            return self._next()

        return logits, advance

    def _next(self) -> torch.Tensor:
        if isinstance(self.decode, dict):
            if not self._tree:
                return self._step(*self._inputs)
            torch.compiler.cudagraph_mark_step_begin()
            return self._step(*self._inputs).clone()  # the next replay overwrites it
        if self.decode == GRAPH and self._replay is None:
            if self._blocked is None:  # this cache's first token: eagerly, checked
                out, self._blocked = self._warm_up()
                return out
            if not self._blocked:
                self._capture()
        if self._replay is not None:
            COUNTS["replays"] += 1
            return self._replay().clone()  # the next replay overwrites it
        COUNTS["eager"] += 1
        return self._decode(*self._inputs)

    def _capture(self) -> None:
        try:
            self._replay = self.record(functools.partial(self._decode, *self._inputs), self._inputs[0].device)
        except Exception as e:  # noqa: BLE001 - nothing ran: the eager step is still the right one
            cause = e.__context__ or e  # (a failed capture's own error says only that the capture failed)
            self._blocked = self._tell(f"capture failed ({type(cause).__name__}: "
                                       f"{(str(cause).splitlines() or [''])[0][:160]})")
        else:
            self._addresses = self._tensor_addresses()
            COUNTS["captures"] += 1

    def _warm_up(self) -> tuple[torch.Tensor, str]:
        """The step run eagerly (what capture asks first: lazy initialisations, library workspaces), with why it
        could not be recorded ("" if it can)."""
        COUNTS["eager"] += 1
        layers = [type(layer).__name__ for layer in getattr(self._cache, "layers", [])]
        # (sliding-window layers: even where the window holds the whole cache, their Python count reaches the masks;
        # recorded anyway, Phi-3.5's and Gemma-3's logits came out wrong in the CPU stand-in)
        if any(name != "StaticLayer" for name in layers):
            why = f"cache layers that count their slots in Python ({sorted(set(layers) - {'StaticLayer'})})"
            return self._decode(*self._inputs), self._tell(why)
        with _HostReads() as seen, accel.side_stream(self._inputs[0].device):
            out = self._decode(*self._inputs)
        return out, self._tell(seen.why)

    def _tell(self, why: str) -> str:
        if why and why not in self._said:  # each reason once
            self._said.add(why)
            print(f"[wb] decode: the static cache's step runs eagerly, not as a CUDA graph: {why}", flush=True)
        return why

    def _tensor_addresses(self) -> list[int]:
        return [t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers())]

    def _cache_for(self, rows: int, length: int, mask_dtype: torch.dtype, device):
        from transformers import StaticCache

        if self._shape == (rows, length, mask_dtype):
            self._cache.reset()  # the same object (and addresses) again: a recorded graph stays valid
            return self._cache
        self._replay = self._blocked = None  # (dropping the graph before its buffers)
        self._cache = self._inputs = None
        self._cache = StaticCache(config=self.model.config, max_cache_len=length)
        self._inputs = (torch.zeros(rows, 1, dtype=torch.long, device=device),        # the next tokens
                        torch.zeros(rows, length, dtype=mask_dtype, device=device),  # the mask
                        torch.zeros(rows, 1, dtype=torch.long, device=device))       # the next position ids
        self._shape = (rows, length, mask_dtype)
        return self._cache

    def _decode(self, tokens, mask, positions):
        return self.call(tokens, mask, positions, self._cache)[0]


class _HostReads(TorchDispatchMode):
    """Notes the first operation inside that a CUDA graph cannot hold; `why` says which ("" if none): `HOST_OPS`,
    indexing with a boolean mask (its size is read on the host), and copies between devices (0-dim host tensors,
    which go to kernels as values, aside)."""

    def __init__(self):
        super().__init__()
        self.why = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.why:
            self.why = _unrecordable(func.overloadpacket.__name__, args, kwargs or {}, out)
        return out


def _unrecordable(name: str, args, kwargs: dict, out) -> str:
    if name in HOST_OPS or (name == "repeat_interleave" and kwargs.get("output_size") is None):
        return f"the step calls {name} (a device value read on the host, or a tensor made from Python data)"
    tensors = [t for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
    if name in ("index", "index_put", "index_put_") and any(
            t is not None and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else [])):
        return f"the step indexes with a boolean mask ({name}: its size is read on the host)"
    devices = {t.device for t in tensors if t.dim() or t.device.type != "cpu"}
    if len(devices) > 1:
        return f"the step copies between devices ({name}: {', '.join(sorted(map(str, devices)))})"
    return ""


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
