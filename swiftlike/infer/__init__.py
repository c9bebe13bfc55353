"""Inference: one engine interface, its backends, and the sampling GRPO's rollout shares.

    engine.submit(prompt_ids, SamplingParams(...), adapter=None) -> Request   (stream it, or .result())
    engine.generate(prompts, params, adapter=None) -> [[Completion] * n per prompt]

Backends: TransformersEngine (continuous batching, any device, several LoRA adapters in one batch) and
VLLMEngine (`pip install vllm`, GPU). Heavy imports wait until a backend is used.
"""
from __future__ import annotations

from .params import Completion, Delta, SamplingParams
from .request import Engine, Request

__all__ = ["Completion", "Delta", "Engine", "Request", "SamplingParams", "TransformersEngine", "VLLMEngine"]


def __getattr__(name: str):
    if name == "TransformersEngine":
        from .engine import TransformersEngine

        return TransformersEngine
    if name == "VLLMEngine":
        from .vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
