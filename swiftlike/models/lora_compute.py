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

`adapters_cast_once(model)`: while a rollout decodes (autograd off), each switched layer reads its adapter weights
cast to the stream's dtype once on entry instead of casting both at every call — 14 of the ~90 kernels of a Qwen3
decoder layer's decode step in a bf16 model. The casts are non-persistent buffers of the layer (not in checkpoints),
kept between entries and refreshed in place, so a CUDA graph captured inside reads the adapters as the optimizer last
left them at every later entry (and the graph's check of the model's tensor addresses covers them).
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F


@functools.cache
def stream_lora_linear() -> type:
    """peft's LoRA Linear with the forward above (made on first use: peft is imported only then)."""
    from peft.tuners.lora.layer import Linear

    class StreamLoraLinear(Linear):
        _wb_cast_for = None  # inside `adapters_cast_once`: the adapter whose weights the cast buffers hold

        def _plain_adapter(self) -> str | None:
            """The one active adapter this forward computes (None: peft's own forward)."""
            active = self.active_adapters
            if (self.disable_adapters or self.merged or self.lora_variant or len(active) != 1
                    or active[0] not in self.lora_A):
                return None
            return active[0]

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            name = None if args or kwargs else self._plain_adapter()
            if name is None:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x)
            if self._wb_cast_for == name and not torch.is_grad_enabled() and self.wb_cast_A.dtype == x.dtype:
                a, b = self.wb_cast_A, self.wb_cast_B
            else:
                a, b = self.lora_A[name].weight.to(x.dtype), self.lora_B[name].weight.to(x.dtype)
            h = F.linear(self.lora_dropout[name](x), a)
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
            module._wb_cast_for = None  # on the instance from the start: torch.compile's guards on it then hold
            switched += 1
    return switched


@contextlib.contextmanager
def adapters_cast_once(model):
    """Inside, with autograd off, the switched LoRA layers of `model` whose adapters are float32 in a lower-precision
    stream read their adapter weights cast once, on entry (module docstring). Weights that are not plain tensors
    (FSDP2's sharded DTensors, gathered only inside the forward) are cast at every call as before."""
    kind, cast = stream_lora_linear(), []
    with torch.inference_mode(False), torch.no_grad():  # (buffers an inference-mode entry made could not be updated)
        for m in (m for m in model.modules() if type(m) is kind):
            name = m._plain_adapter()
            dtype = m.base_layer.weight.dtype
            if (name is None or not dtype.is_floating_point or m.lora_A[name].weight.dtype == dtype
                    or any(type(w.data) is not torch.Tensor for w in (m.lora_A[name].weight, m.lora_B[name].weight))):
                continue
            for key, weight in (("wb_cast_A", m.lora_A[name].weight), ("wb_cast_B", m.lora_B[name].weight)):
                buffer = m._buffers.get(key)
                if buffer is not None and (buffer.shape, buffer.dtype, buffer.device) == (
                        weight.shape, dtype, weight.device):
                    buffer.copy_(weight)  # in place: the address a captured graph reads stays
                else:
                    m.register_buffer(key, weight.detach().to(dtype), persistent=False)
            m._wb_cast_for = name
            cast.append(m)
    try:
        yield
    finally:
        for m in cast:
            m._wb_cast_for = None
