"""Calibration layer by layer, shared by the quantizers that fit weights to data (export/gptq.py, export/awq.py):
the calibration rows go through the model once to capture what each decoder layer is given; then each layer in turn
sees its inputs as the layers before it compute them once quantized, so later layers correct for earlier errors."""
from __future__ import annotations

import torch


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (the ModuleList as long as its config's num_hidden_layers)."""
    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"no stack of {count} decoder layers found in {type(model).__name__}")


@torch.no_grad()
def layer_by_layer(model, rows: list[list[int]], progress=None):
    """For each decoder layer in order: (its nn.Linear modules by full name, run), where run() passes the layer's
    calibration inputs through it (the caller's hooks on the linears see their inputs). When the caller asks for the
    next layer, this layer's outputs — with its weights as the caller left them — become that layer's inputs.
    `rows`: token ids, one forward each (no padding)."""
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    if progress is not None:
        progress.total = len(layers)
    inputs, layer_kwargs = [], [[] for _ in layers]

    def capture(index):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            layer_kwargs[index].append(kwargs)
            if index == 0:
                inputs.append(hidden)
        return hook

    # every layer's keyword inputs (masks, rotary embeddings: they do not depend on the weights) from one pass
    hooks = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids in rows:
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    names = {id(module): name for name, module in model.named_modules()}
    for index, layer in enumerate(layers):
        linears = {f"{names[id(layer)]}.{name}": module for name, module in layer.named_modules()
                   if isinstance(module, torch.nn.Linear)}

        def run(layer=layer, index=index):
            return [_hidden(layer(hidden, **kwargs)) for hidden, kwargs in zip(inputs, layer_kwargs[index])]

        yield linears, run
        inputs = run()
        if progress is not None:
            progress.update(1)


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output
