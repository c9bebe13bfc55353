"""A checkpoint as one plain Hugging Face model: LoRA / DoRA / rsLoRA adapters folded into the base weights.

A QLoRA adapter was trained against the 4-bit NF4 base, so it is folded into that base dequantized to the export
dtype (never re-quantized to 4 bits: merged 4-bit weights lose the adapter's small updates). A reward model keeps
its score head (the adapter saves it with the adapters). A full-parameter checkpoint is loaded as it is.
"""
from __future__ import annotations

import torch

from .. import accel
from ..errors import UserError
from ..models.loader import load_model
from ..models.resolve import ModelRef, added_token_ids, base_weights
from ..models.tokens import rebuild_rows


def merged_model(ref: ModelRef, dtype: torch.dtype, pad_token_id: int | None, trust_remote_code: bool = False):
    """The model to export, on the CPU, in `dtype`, with no adapter layers left."""
    reward = ref.task == "rm"
    kw = dict(trust_remote_code=trust_remote_code, reward_head=reward, pad_token_id=pad_token_id,
              device=torch.device("cpu"), announce_head=False)
    base = base_weights(ref, trust_remote_code)
    if not ref.adapters:
        return load_model(base, dtype, **kw)
    model = load_model(base, dtype, **kw)
    if trained_on_4bit(ref.args):
        _load_dequantized_nf4(model, base, dtype, kw)
    rebuild_rows(model, added_token_ids(ref))
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, ref.adapters)
    except (ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"--adapters {ref.adapters} does not fit {base}: {str(e).splitlines()[0]}") from None
    trained = ((name, p) for name, p in model.named_parameters() if "lora_" in name or "modules_to_save" in name)
    bad = next((name for name, p in trained if not torch.isfinite(p).all()), None)
    if bad:
        raise UserError(f"--adapters {ref.adapters} holds NaN or inf values ({bad}): the run diverged; nothing was "
                        "exported")
    return model.merge_and_unload()  # in place (PEFT's safe_merge would hold a second copy of each weight)


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
