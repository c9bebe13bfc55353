"""Quantized exports that plain transformers reloads as written (safetensors, the quantization recorded in
config.json):

    bnb      bitsandbytes: 4-bit NF4 (double-quantized, as QLoRA trains) or 8-bit LLM.int8
    torchao  int8 weight-only, or int4 weight-only in groups (torchao's IntxWeightOnly form, which runs on CPU)
    fp8      FP8 E4M3 weights with a scale per output channel, activations quantized per token at run time
             (llm-compressor's FP8_DYNAMIC scheme), in the compressed-tensors format that vLLM serves; no
             calibration, so it is written on CPU as well as on a GPU

GPTQ and AWQ calibrate on a CUDA GPU through gptqmodel / llm-compressor; this version does not drive them and says
so before any work is done.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import accel
from ..errors import UserError
from ..models.loader import quiet_libraries

METHODS = ("bnb", "torchao", "fp8")
GPU_ONLY = {"gptq": "gptqmodel", "awq": "llm-compressor"}
_INSTALL = {"bnb": "bitsandbytes", "torchao": "torchao", "fp8": "compressed_tensors"}
# Linear layers left unquantized by fp8, as llm-compressor's FP8 recipes leave them: the output head, and the
# router of a mixture-of-experts block (`mlp.gate`, not `mlp.gate_proj`)
FP8_IGNORE = ["lm_head", r"re:.*mlp\.gate$"]


def check_method(method: str, bits: int) -> None:
    """Refuse what cannot be written here, before any weights are merged."""
    if method in GPU_ONLY:
        raise UserError(f"--quant_method {method} is not available in this version of swiftlike (it calibrates on a "
                        f"CUDA GPU with {GPU_ONLY[method]}): use --quant_method fp8, bnb or torchao, or quantize the "
                        f"merged export with {GPU_ONLY[method]}")
    if method not in METHODS:
        raise UserError(f"--quant_method {method!r} is not one of {', '.join(METHODS + tuple(GPU_ONLY))}")
    if bits not in ((8,) if method == "fp8" else (4, 8)):
        writes = "8 bits (FP8 E4M3)" if method == "fp8" else "4 or 8 bits"
        raise UserError(f"--quant_bits {bits}: {method} writes {writes}")
    module = _INSTALL[method]
    try:
        _quiet_import(module)
    except ImportError:
        raise UserError(f"--quant_method {method} needs {module.replace('_', '-')}: "
                        "pip install 'swiftlike[quant]'") from None


def _quiet_import(module: str):
    quiet_libraries()  # torchao logs the optional CUDA kernels it cannot load on every import
    return __import__(module)


def quantization_config(method: str, bits: int, dtype: torch.dtype, config) -> object:
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if method == "bnb":
        if bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype)
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if bits == 8:
        return TorchAoConfig(Int8WeightOnlyConfig())
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size(config))))


def group_size(config) -> int:
    """The largest of 128, 64, 32, 16 that divides every linear layer's input width."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    widths = [getattr(text, key, None) for key in ("hidden_size", "intermediate_size", "moe_intermediate_size")]
    heads, head_dim = getattr(text, "num_attention_heads", None), getattr(text, "head_dim", None)
    widths.append(heads * head_dim if heads and head_dim else None)
    widths = [w for w in widths if isinstance(w, int) and w > 0]
    for size in (128, 64, 32, 16):
        if all(w % size == 0 for w in widths):
            return size
    raise UserError(f"--quant_method torchao --quant_bits 4: layer widths {sorted(set(widths))} have no common group "
                    "size of 16 or more; use --quant_bits 8")


def quantize_directory(source: Path, target: Path, method: str, bits: int, dtype: torch.dtype,
                       max_shard_size: str) -> None:
    """Load the unquantized export in `source` through transformers' quantizer and save it to `target`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_import("torchao" if method == "torchao" else "bitsandbytes")
    qconfig = quantization_config(method, bits, dtype, AutoConfig.from_pretrained(source))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, quantization_config=qconfig,
                                                 device_map={"": accel.device()})
    model.save_pretrained(target, safe_serialization=True, max_shard_size=max_shard_size)


def fp8_weights(model):
    """Quantize the model's Linear weights (but FP8_IGNORE) to FP8 E4M3 in place, each output channel scaled by its
    largest magnitude / 448, with compressed-tensors; returns the compressor whose `update_config(DIR)` records the
    scheme in the saved config.json (quant_method "compressed-tensors", as vLLM and transformers read it)."""
    _quiet_import("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationStatus, apply_quantization_config,
                                                 preset_name_to_scheme)
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=FP8_IGNORE,
                                                        quantization_status=QuantizationStatus.INITIALIZED))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                weight = module.weight.float()
                scale, _ = calculate_qparams(weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True),
                                             scheme.weights)
                module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="float-quantized")
    compressor.compress_model(model)
    return compressor


def reload(directory: Path):
    """The quantized export as a user loads it: plain from_pretrained, no swiftlike involved."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, device_map={"": accel.device()})
