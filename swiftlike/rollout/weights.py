"""The policy's weights as the base architecture names them, for an inference engine to load.

A LoRA policy is sent merged (W + scale x B @ A) and only for the modules that carry adapters; a full-
parameter policy sends every parameter. Names are the plain transformers ones (`model.layers.0...`), which
vLLM's `load_weights` and `load_state_dict` of the base model both accept.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..errors import UserError



def _lora_layers(model) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def policy_weights(model, everything: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs to load into an engine holding the base model: what training can change, or with
    `everything` every parameter (a first sync makes an engine started from other weights identical)."""
    if not hasattr(model, "peft_config"):
        for name, p in model.named_parameters():
            if everything or p.requires_grad:
                yield name, p.detach()
        return
    adapter = model.active_adapter
    base_model = model.get_base_model()
    for name, layer in _lora_layers(base_model):
        if getattr(layer, "use_dora", {}).get(adapter):
            raise UserError("DoRA adapters cannot be synced to an inference engine; train LoRA (drop --use_dora)")
        base = layer.get_base_layer()
        if getattr(base.weight, "quant_state", None) is not None:
            raise UserError("a 4-bit (QLoRA) policy cannot be synced to an inference engine; use --lora with "
                            "vLLM, or the transformers backend")
        weight = base.weight.detach()
        if adapter in layer.lora_A:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        yield f"{name}.weight", weight
        if everything and getattr(base, "bias", None) is not None:
            yield f"{name}.bias", base.bias.detach()
    for name, p in base_model.named_parameters():  # the rest: everything, or what trains beside the adapters
        if "lora_" in name or ".base_layer." in name or ".original_module." in name:
            continue
        if everything or p.requires_grad:
            yield _plain_name(name.replace(".modules_to_save.default", "")), p.detach()


def _plain_name(name: str) -> str:
    return name.replace(".base_layer", "")


def to_bytes(weights: Iterator[tuple[str, torch.Tensor]]) -> bytes:
    """A safetensors payload (no pickle on either side)."""
    from safetensors.torch import save

    return save({name: t.contiguous().cpu() for name, t in weights})


def from_bytes(payload: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(payload)
