"""How a LoRA layer computes while it trains: in the residual stream's dtype, with the adapter's product added
inside its last matmul; the adapter weights stay float32.

peft's own forward, in a bf16 or fp16 model, casts each adapted layer's input to the float32 adapters' dtype, so
autograd keeps a float32 copy of it for backward — one per adapted layer: q, k and v each keep their own copy of
the same normalised hidden state, down_proj a float32 copy of the MLP's widest tensor (106 KB a token and layer
for Qwen3-4B, 30 GB at 8k tokens) — and then adds `lora_B(lora_A(x)) * scaling` to the base output in three
passes over a tokens x width tensor (B's output, the scaling, the sum) and three more in backward.

`compute_in_stream_dtype` switches every plain LoRA linear layer of a peft model to `StreamLoraLinear`, whose
forward is

    base(x) + scaling * (A(dropout(x)) @ B^T)   as   addmm(base(x), A(dropout(x)), B^T, alpha=scaling)

with A and B cast to x's dtype (r x width elements, cheap), as torch.autocast computes them (the gradient flows
back through the cast into the float32 weight, where gradients accumulate and the optimizer updates). Autograd
then keeps the input itself, shared by the layers that read it (q/k/v, gate/up), and for o_proj the tensor the
attention kernel keeps anyway; the sum is the matmul's epilogue and its backward applies the scaling to r-wide
tensors only. In a float32 model (and under QLoRA, whose stream peft upcasts to float32) the casts are no-ops.
Anything else — adapters disabled or merged, several active adapters, a mixed batch (`adapter_names`), DoRA and
the other variants — runs peft's own forward; so does ZeRO-3 (the pipeline does not switch its layers: DeepSpeed
gathers an adapter's weights only when the adapter's own module runs).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def stream_lora_linear() -> type:
    """peft's LoRA Linear with the forward above (made on first use: peft is imported only then)."""
    from peft.tuners.lora.layer import Linear

    class StreamLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            active = self.active_adapters
            if (args or kwargs or self.disable_adapters or self.merged or self.lora_variant or len(active) != 1
                    or active[0] not in self.lora_A):
                return super().forward(x, *args, **kwargs)
            name = active[0]
            result = self.base_layer(x)
            h = F.linear(self.lora_dropout[name](x), self.lora_A[name].weight.to(x.dtype))
            b = self.lora_B[name].weight.to(x.dtype)
            rows = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.t(),
                               alpha=self.scaling[name])
            return rows.view(result.shape)

    return StreamLoraLinear


def compute_in_stream_dtype(model) -> int:
    """Switch the LoRA linear layers of a peft `model` whose adapters are plain, bias-free nn.Linear maps to the
    forward above; returns how many."""
    from peft.tuners.lora.layer import Linear

    switched = 0
    for module in model.modules():
        if type(module) is not Linear or module.lora_variant:
            continue
        maps = [m for d in (module.lora_A, module.lora_B) for m in d.values()]
        if all(type(m) is torch.nn.Linear and m.bias is None for m in maps):
            module.__class__ = stream_lora_linear()
            switched += 1
    return switched
