"""LoRA adapters compute in the dtype of the residual stream; their weights stay float32.

peft keeps adapter weights in float32 (its `autocast_adapter_dtype`) and, in a bf16 or fp16 model, casts each
adapted layer's input to float32 before the adapter's matmuls. Autograd then keeps that float32 copy for backward,
one per adapted layer: q, k and v each keep their own copy of the same normalised hidden state, and down_proj a
float32 copy of the MLP's widest tensor. For Qwen3-4B that is 106 KB a token and layer, 30 GB for 8k tokens, plus
the casts' memory traffic and float32 matmuls, both ways.

`compute_in_input_dtype` makes every plain LoRA linear layer of a peft model run its adapters as mixed precision
does (torch.autocast, which TRL and the HF Trainer use): the input stays in the stream's dtype, each adapter weight
is cast to it for the matmul (r x width elements, cheap), and the gradient flows back through that cast into the
float32 weight, where gradients accumulate and the optimizer updates. What autograd keeps is then the input tensor
itself, shared by the layers that read it (q/k/v, gate/up) and, for o_proj, the one the attention kernel keeps.
In a float32 model (and under QLoRA, whose stream peft upcasts to float32) nothing changes: the casts are no-ops.
DoRA and other variants keep peft's own float32 path (their magnitude terms mix the weights themselves).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class InputDtypeLinear(torch.nn.Linear):
    """nn.Linear that computes in its input's dtype (the weights are cast, not the input); state dict unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def compute_in_input_dtype(model) -> int:
    """Switch the plain LoRA linear layers of a peft `model` to compute in their input's dtype; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear) or module.lora_variant:
            continue
        for adapters in (module.lora_A, module.lora_B):
            for linear in adapters.values():
                if type(linear) is torch.nn.Linear:
                    linear.__class__ = InputDtypeLinear
        module.cast_input_dtype_enabled = False
        switched += 1
    return switched
