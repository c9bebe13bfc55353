"""AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"), written
from the paper: the few input channels that carry large activations matter most, so before rounding, each group of
linear layers that reads the same input has its input channels scaled up by s = mean|x|^a (normalized by
sqrt(max s * min s)) and the operation that produces that input scaled down by 1/s — the same function, but the
salient weights now round with a smaller relative error. The exponent a is searched on a grid of 20 in [0, 1) per
group, keeping the one whose rounded weights move the group's outputs on the calibration inputs least (a = 0 is
rounding to nearest, so the search never does worse on them). Then every linear layer is rounded to nearest on the
group grid. Layer by layer (export/calibrate.py): the searches see inputs as the already quantized layers compute.

Where the scales go — Llama-layout decoder layers (Llama, Mistral, Qwen2/2.5, Qwen3):
    input_layernorm          -> q_proj, k_proj, v_proj
    v_proj (when its outputs are o_proj's inputs, i.e. no grouped-query attention) -> o_proj
    post_attention_layernorm -> gate_proj, up_proj
    up_proj                  -> down_proj
Not done (the paper's optional second step): clipping the weight range per group.
"""
from __future__ import annotations

import torch

from .calibrate import layer_by_layer

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SMOOTH = [("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
          ("self_attn.v_proj", ("self_attn.o_proj",)),
          ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
          ("mlp.up_proj", ("mlp.down_proj",))]
GRID = 20
TOKENS = 4096  # calibration tokens per group kept for the search (evenly from the rows, in order)


def rounded(weight: torch.Tensor, bit_min: int, bit_max: int, group: int, scale_of):
    """(weight rounded to nearest on its group grid, scales (rows x groups)), computed in float32."""
    w = weight.float().reshape(weight.shape[0], -1, group)
    scale = scale_of(w.amin(-1), w.amax(-1)).to(weight.dtype).float()
    q = torch.clamp(torch.round(w / scale[..., None]), bit_min, bit_max) * scale[..., None]
    return q.reshape(weight.shape), scale


@torch.no_grad()
def best_scales(x: torch.Tensor, weights: list[torch.Tensor], bit_min: int, bit_max: int, group: int,
                scale_of) -> torch.Tensor:
    """The per-input-channel scales s of a group of linear layers reading `x` (tokens x channels): the grid point
    a that minimizes the squared change of their outputs x W^T when W is replaced by round(W s) / s."""
    x = x.float()
    magnitude = x.abs().mean(dim=0)
    reference = [x @ w.float().T for w in weights]
    best, best_loss = torch.ones_like(magnitude), None
    for a in (i / GRID for i in range(GRID)):
        s = magnitude.pow(a).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = sum(float(((x @ (rounded(w * s, bit_min, bit_max, group, scale_of)[0] / s).T - out) ** 2).sum())
                   for w, out in zip(weights, reference))
        if best_loss is None or loss < best_loss:
            best, best_loss = s, loss
    return best


@torch.no_grad()
def quantize_model(model, rows: list[list[int]], bit_min: int, bit_max: int, group: int | None, scale_of,
                   skip=lambda name: False, progress=None) -> dict[str, torch.Tensor]:
    """AWQ on the decoder's Linear layers (but `skip` names) with `rows` (token ids) as calibration data: scales
    searched and folded in (see the module's docstring), then every linear rounded to nearest in place. Returns
    each quantized layer's scales (rows x groups) by its full module name."""
    scales = {}
    for linears, run in layer_by_layer(model, rows, progress):
        prefix = next(iter(linears)).rsplit(".", 2)[0]  # "model.layers.N"
        layer = model.get_submodule(prefix)
        groups = [(source, readers) for source, readers in SMOOTH
                  if _fits(layer, source, readers)]
        inputs = {readers[0]: [] for _, readers in groups}
        hooks = [layer.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: inputs[name].append(args[0].flatten(0, -2)))
            for name in inputs]
        try:
            run()
        finally:
            for h in hooks:
                h.remove()
        found = []
        for source, readers in groups:
            x = _sample(torch.cat(inputs[readers[0]]))
            weights = [layer.get_submodule(name).weight for name in readers]
            found.append((source, readers, best_scales(x, weights, bit_min, bit_max, group or x.shape[1],
                                                       scale_of)))
        for source, readers, s in found:  # the same function: the source's outputs / s, the readers' inputs * s
            producer = layer.get_submodule(source)
            producer.weight.div_(s.view(-1, *([1] * (producer.weight.dim() - 1))).to(producer.weight.dtype))
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(s.to(producer.bias.dtype))
            for name in readers:
                reader = layer.get_submodule(name)
                reader.weight.mul_(s.to(reader.weight.dtype))
        for name, module in linears.items():
            if skip(name):
                continue
            q, scales[name] = rounded(module.weight, bit_min, bit_max, group or module.in_features, scale_of)
            module.weight.copy_(q.to(module.weight.dtype))
    return scales


def _fits(layer, source: str, readers: tuple[str, ...]) -> bool:
    """Whether this layer has the source and readers, and the source's outputs are exactly the readers' inputs."""
    try:
        producer, modules = layer.get_submodule(source), [layer.get_submodule(name) for name in readers]
    except AttributeError:
        return False
    width = producer.weight.shape[0]
    return all(isinstance(m, torch.nn.Linear) and m.in_features == width for m in modules)


def _sample(x: torch.Tensor) -> torch.Tensor:
    """At most TOKENS of the calibration tokens, evenly spaced."""
    if len(x) <= TOKENS:
        return x
    return x[torch.linspace(0, len(x) - 1, TOKENS).long()]
