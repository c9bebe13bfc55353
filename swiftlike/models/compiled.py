"""`--torch_compile`: each decoder layer of a training model compiled on its own with torch.compile.

A training step of a small model on a GPU is bound by kernel launches, not by its matmuls: Qwen3-0.6B at 8k tokens a
step spends ~295 ms for ~26 ms of matmul on an H100, in thousands of small kernels (norms, RoPE, the SwiGLU product,
LoRA's casts, their backward). Inductor fuses them into a few kernels per layer. Compiling layer by layer, not the
whole model, keeps what happens around the layers in plain PyTorch (the varlen batch's bookkeeping, our chunked
linear cross-entropy, gradient checkpointing, which wraps each compiled layer) and compiles one graph that every
layer reuses (they share their code; their weights are the graph's inputs). Shapes are dynamic from the start: a
packed row's length changes every step. Measured on an H100 (docs/benchmarks.md): Qwen3-0.6B LoRA 26,929 -> 37,487
tokens/s, Qwen3-4B LoRA 15,297 -> 18,958 tokens/s; the first step pays the compilation (~45 s there).

Liger's Triton kernels are off with it by default (models/kernels.py): inductor fuses the same norms, MLPs and RoPE,
and torch.compile cannot see into Liger's kernels (it breaks the graph around each).

`uncompiled(model)` runs the layers eagerly for a while: a rollout's token-by-token decoding (rollout/hf.py), whose
caches and one-token shapes would otherwise make every layer graph guard on and recompile for them.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import UserError


def decoder_layers(model) -> list[torch.nn.Module]:
    """The layers transformers marks as the repeated blocks of a model (its GradientCheckpointingLayer: decoder
    layers, and a vision tower's blocks)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model, backend: str = "inductor") -> int:
    """Compiles every decoder layer of `model` in place (its state dict keeps its keys); returns how many.
    `backend`: torch.compile's (tests check the wiring with "aot_eager", which compiles in a second)."""
    layers = decoder_layers(model)
    if not layers:
        raise UserError(f"--torch_compile: {model.config.model_type} has no layers transformers marks as decoder "
                        "layers (GradientCheckpointingLayer); drop --torch_compile")
    for layer in layers:
        if getattr(layer, "gradient_checkpointing", False):
            # transformers checkpoints a layer around its call, outside the compiled function, and torch.compile
            # does not trace under checkpoint's hooks (the layer would silently run eager); checkpointed inside
            # the compiled function instead, it recomputes the fused graph's forward in backward
            layer.gradient_checkpointing = False
            layer._compiled_call_impl = torch.compile(functools.partial(_checkpointed, layer), dynamic=True,
                                                      backend=backend)
        else:
            layer.compile(dynamic=True, backend=backend)
    return len(layers)


def _checkpointed(layer, *args, **kwargs):
    if layer.training and torch.is_grad_enabled():
        return checkpoint(layer._call_impl, *args, use_reentrant=False, **kwargs)
    return layer._call_impl(*args, **kwargs)


@contextlib.contextmanager
def uncompiled(model):
    """Inside, compiled layers run their eager forward; compiled again afterwards."""
    saved = [(m, m._compiled_call_impl) for m in decoder_layers(model) if m._compiled_call_impl is not None]
    for m, _ in saved:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl
