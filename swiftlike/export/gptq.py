"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"),
written from the paper: each linear layer's weights are rounded one input column at a time, and each column's
rounding error is spread over the columns not yet rounded in proportion to the inverse Hessian of the layer's
inputs, H = 2 X^T X over the calibration tokens, so the layer's outputs on that data move as little as possible.

The decoder is quantized layer by layer: a layer's Hessians come from its inputs as the already quantized layers
before it compute them (the paper's sequential form), so later layers correct for earlier layers' errors. Scales
are symmetric, one per output row and group of input columns (or per row), computed when the sweep reaches the
group from the weights as updated so far, rounded to the storage dtype first so the grid written is the grid used.
The results are the weights on that grid (in place) and the scales; export/quantize.py stores them in the
compressed-tensors format (integers packed, as vLLM and transformers read them).
"""
from __future__ import annotations

import torch

DAMPING = 0.01  # fraction of the Hessian's mean diagonal added to it (keeps the inverse well conditioned)
BLOCK = 128  # columns updated eagerly; the rest of the matrix is updated once per block (the paper's lazy batch)


class _Captured(Exception):
    """Stops the model's forward once the first decoder layer's inputs are captured."""


def quantize_columns(weight: torch.Tensor, hessian: torch.Tensor, bit_min: int, bit_max: int, group: int,
                     scale_of, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights on the quantization grid, scales (rows x groups)) of one linear layer: weight (rows x columns),
    hessian (columns x columns); `group` input columns share a scale (group = columns: one scale per row);
    scale_of(min, max) -> scales is the format's own rule (compressed-tensors' calculate_qparams)."""
    rows, columns = weight.shape
    w = weight.detach().float().clone()
    h = hessian.float().clone()
    dead = torch.diag(h) == 0  # inputs that never fire: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    h += DAMPING * torch.mean(torch.diag(h)) * torch.eye(columns, device=h.device)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.zeros_like(w)
    scales = []
    block = max(BLOCK // group, 1) * group if group < columns else BLOCK  # a whole number of groups per block
    for start in range(0, columns, block):
        end = min(start + block, columns)
        w_block, errors, inv = w[:, start:end].clone(), torch.zeros(rows, end - start, device=w.device), \
            inverse[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % group == 0:  # this group's scale, from its weights as updated so far
                span = w_block[:, i:i + group] if group < columns else w
                scale = scale_of(span.amin(dim=1), span.amax(dim=1)).to(scale_dtype).float()
                scales.append(scale)
            q = torch.clamp(torch.round(w_block[:, i] / scale), bit_min, bit_max) * scale
            out[:, column] = q
            error = (w_block[:, i] - q) / inv[i, i]
            w_block[:, i:] -= error[:, None] * inv[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    return out, torch.stack(scales, dim=1)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (the ModuleList as long as its config's num_hidden_layers)."""
    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"no stack of {count} decoder layers found in {type(model).__name__}")


@torch.no_grad()
def quantize_model(model, rows: list[list[int]], bit_min: int, bit_max: int, group: int | None, scale_of,
                   skip=lambda name: False, progress=None) -> dict[str, torch.Tensor]:
    """GPTQ on every nn.Linear inside the decoder layers (but those `skip` names), sequentially over the layers,
    with `rows` (token ids) as calibration data; the weights are set in place to their quantized values.
    Returns each quantized layer's scales by its full module name."""
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    if progress is not None:
        progress.total = len(layers)
    first_inputs, layer_kwargs = [], [[] for _ in layers]

    def capture(index):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            layer_kwargs[index].append(kwargs)
            if index == 0:
                first_inputs.append(hidden)
        return hook

    # every layer's keyword inputs (masks, rotary embeddings: they do not depend on the weights) from one pass
    hooks = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids in rows:
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    prefix = {id(layer): name for name, layer in model.named_modules()}
    scales, inputs = {}, first_inputs
    for index, layer in enumerate(layers):
        linears = {f"{prefix[id(layer)]}.{name}": module for name, module in layer.named_modules()
                   if isinstance(module, torch.nn.Linear) and not skip(f"{prefix[id(layer)]}.{name}")}
        hessians = {name: _Hessian(module.in_features, device) for name, module in linears.items()}
        hooks = [module.register_forward_hook(hessians[name].add) for name, module in linears.items()]
        try:
            for hidden, kwargs in zip(inputs, layer_kwargs[index]):
                layer(hidden, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        for name, module in linears.items():
            columns = module.in_features
            q, scale = quantize_columns(module.weight, hessians[name].h, bit_min, bit_max, group or columns,
                                        scale_of, module.weight.dtype)
            module.weight.copy_(q.to(module.weight.dtype))
            scales[name] = scale
        inputs = [_hidden(layer(hidden, **kwargs)) for hidden, kwargs in zip(inputs, layer_kwargs[index])]
        if progress is not None:
            progress.update(1)
    return scales


class _Hessian:
    """2 X^T X / n over the inputs a linear layer sees (a running mean over the calibration tokens)."""

    def __init__(self, columns: int, device):
        self.h = torch.zeros(columns, columns, device=device)
        self.n = 0

    def add(self, module, args, output) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        t = x.shape[0]
        self.h *= self.n / (self.n + t)
        self.n += t
        x = x * (2 / self.n) ** 0.5
        self.h += x.T @ x


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output
