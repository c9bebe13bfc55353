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

from .calibrate import layer_by_layer

DAMPING = 0.01  # fraction of the Hessian's mean diagonal added to it (keeps the inverse well conditioned)
BLOCK = 128  # columns updated eagerly; the rest of the matrix is updated once per block (the paper's lazy batch)


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


@torch.no_grad()
def quantize_model(model, rows: list[list[int]], bit_min: int, bit_max: int, group: int | None, scale_of,
                   skip=lambda name: False, progress=None) -> dict[str, torch.Tensor]:
    """GPTQ on every nn.Linear inside the decoder layers (but those `skip` names), sequentially over the layers,
    with `rows` (token ids) as calibration data; the weights are set in place to their quantized values.
    Returns each quantized layer's scales by its full module name."""
    scales = {}
    for linears, run in layer_by_layer(model, rows, progress):
        linears = {name: module for name, module in linears.items() if not skip(name)}
        hessians = {name: _Hessian(module.in_features, module.weight.device) for name, module in linears.items()}
        hooks = [module.register_forward_hook(hessians[name].add) for name, module in linears.items()]
        try:
            run()
        finally:
            for h in hooks:
                h.remove()
        for name, module in linears.items():
            columns = module.in_features
            q, scale = quantize_columns(module.weight, hessians[name].h, bit_min, bit_max, group or columns,
                                        scale_of, module.weight.dtype)
            module.weight.copy_(q.to(module.weight.dtype))
            scales[name] = scale
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
