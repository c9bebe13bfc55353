"""A checkpoint as one plain Hugging Face model: LoRA / DoRA / rsLoRA adapters folded into the base weights.

A QLoRA adapter was trained against the 4-bit NF4 base, so it is folded into that base dequantized to the export
dtype (never re-quantized to 4 bits: merged 4-bit weights lose the adapter's small updates). A reward model keeps
its score head (the adapter saves it with the adapters). A full-parameter checkpoint is loaded as it is.
"""
from __future__ import annotations

import torch

from .. import accel
from ..errors import UserError, intact
from ..models.loader import load_model
from ..models.resolve import ModelRef, added_token_ids, base_weights
from ..models.tokens import rebuild_rows


def merged_model(ref: ModelRef, dtype: torch.dtype, pad_token_id: int | None, trust_remote_code: bool = False):
    """The model to export, on the CPU, in `dtype`, with no adapter layers left."""
    reward = ref.task == "rm"
    kw = dict(trust_remote_code=trust_remote_code, reward_head=reward, pad_token_id=pad_token_id,
              device=torch.device("cpu"), announce_head=False, overrides=ref.overrides)
    base = base_weights(ref, trust_remote_code)
    if not ref.adapters:
        return load_model(base, dtype, **kw)
    model = load_model(base, dtype, **kw)
    if trained_on_4bit(ref.args):
        _load_dequantized_nf4(model, base, dtype, kw)
    rebuild_rows(model, added_token_ids(ref))
    _untie_adapted(model, ref.adapters)
    from peft import PeftModel

    try:
        with intact(ref.adapters):
            model = PeftModel.from_pretrained(model, ref.adapters)
    except (ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"--adapters {ref.adapters} does not fit {base}: {str(e).splitlines()[0]}") from None
    trained = ((name, p) for name, p in model.named_parameters() if "lora_" in name or "modules_to_save" in name)
    bad = next((name for name, p in trained if not torch.isfinite(p).all()), None)
    if bad:
        raise UserError(f"--adapters {ref.adapters} holds NaN or inf values ({bad}): the run diverged; nothing was "
                        "exported")
    return model.merge_and_unload()  # in place (PEFT's safe_merge would hold a second copy of each weight)


def _untie_adapted(model, adapter_dir: str) -> None:
    """A LoRA on the output layer (or the input embedding) of a model whose two share one weight trained that
    layer's use of it alone; merged into the shared weight it would change the other too. The output layer gets its
    own copy first, and the exported config says the two are untied."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embed.weight:
        return
    names = {id(m): n for n, m in model.named_modules()}
    adapted = {key.rsplit(".lora_", 1)[0] for key in adapter_keys(adapter_dir) if ".lora_" in key}
    if not any(m.endswith(f".{names[id(layer)]}") for m in adapted for layer in (head, embed)):
        return
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False


def adapter_keys(adapter_dir: str) -> list[str]:
    """The tensor names of an adapter checkpoint (safetensors or PEFT's older .bin), read without loading them."""
    from pathlib import Path

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        path = Path(adapter_dir) / "adapter_model.bin"
        return list(torch.load(path, map_location="meta", weights_only=True)) if path.is_file() else []
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def trained_on_4bit(args: dict) -> bool:
    """Whether a checkpoint's args.json says QLoRA (its adapter was trained against NF4 weights)."""
    return args.get("train_type") == "qlora" or bool(args.get("qlora"))


def nf4_functional():
    """bitsandbytes' functional module, which a QLoRA merge needs to reproduce the 4-bit base (one line if missing)."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise UserError("merging a QLoRA adapter needs bitsandbytes to reproduce its 4-bit base: "
                        "pip install 'swiftlike[qlora]'") from None
    return bnbf


def _load_dequantized_nf4(model, base: str, dtype: torch.dtype, kw: dict) -> None:
    """Replace the linear weights of `model` by those the QLoRA run trained against: NF4 (double-quantized, as
    models/loader.py quantizes) and back, in `dtype`."""
    bnbf = nf4_functional()
    quantized = load_model(base, dtype, quantize_4bit=True, **{**kw, "device": accel.device()})
    weights = {}
    for name, module in quantized.named_modules():
        weight = getattr(module, "weight", None)
        if getattr(weight, "quant_state", None) is not None:
            weights[name + ".weight"] = bnbf.dequantize_4bit(weight.data, weight.quant_state).to("cpu", dtype)
    del quantized
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.reshape(params[name].shape))
