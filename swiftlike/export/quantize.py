"""Quantized exports that plain transformers reloads as written (safetensors, the quantization recorded in
config.json):

    bnb      bitsandbytes: 4-bit NF4 (double-quantized, as QLoRA trains) or 8-bit LLM.int8
    torchao  int8 weight-only, or int4 weight-only in groups (torchao's IntxWeightOnly form, which runs on CPU)
    fp8      FP8 E4M3 weights with a scale per output channel, activations quantized per token at run time
             (llm-compressor's FP8_DYNAMIC scheme), in the compressed-tensors format that vLLM serves; no
             calibration, so it is written on CPU as well as on a GPU
    gptq     int4 in groups (or int8 per channel) weights, activations unquantized (W4A16 / W8A16), rounded by
             GPTQ (export/gptq.py) on the calibration rows, packed in the compressed-tensors format vLLM serves
             with its Marlin kernels; on CUDA when the model is there, else on CPU (slower, same result)
    awq      int4 in groups, the input channels that carry large activations scaled up before rounding (AWQ,
             export/awq.py; Llama-layout models), in the same format as gptq

llm-compressor, which implements GPTQ and AWQ, pins transformers <= 5.17 and gptqmodel a torch >= 2.14, so neither
installs beside this stack: both algorithms are written here from their papers (benchmarks/gptq_quality.py
compares ours with llm-compressor's GPTQ run from its own environment).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import accel
from ..errors import UserError
from ..models.loader import quiet_libraries

METHODS = ("bnb", "torchao", "fp8", "gptq", "awq")
_INSTALL = {"bnb": "bitsandbytes", "torchao": "torchao", "fp8": "compressed_tensors", "gptq": "compressed_tensors",
            "awq": "compressed_tensors"}
_BITS = {"fp8": ((8,), "8 bits (FP8 E4M3)"), "awq": ((4,), "4 bits (int4 in groups)")}
# Linear layers fp8, gptq and awq leave unquantized, as llm-compressor's recipes do: the output head, and the router of
# a mixture-of-experts block (`mlp.gate`, not `mlp.gate_proj`)
UNQUANTIZED = ["lm_head", r"re:.*mlp\.gate$"]


def check_method(method: str, bits: int) -> None:
    """Refuse what cannot be written here, before any weights are merged."""
    if method not in METHODS:
        raise UserError(f"--quant_method {method!r} is not one of {', '.join(METHODS)}")
    allowed, writes = _BITS.get(method, ((4, 8), "4 or 8 bits"))
    if bits not in allowed:
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
                       max_shard_size: int) -> None:
    """Load the unquantized export in `source` through transformers' quantizer and save it to `target`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_import("torchao" if method == "torchao" else "bitsandbytes")
    qconfig = quantization_config(method, bits, dtype, AutoConfig.from_pretrained(source))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, quantization_config=qconfig,
                                                 device_map={"": accel.device()})
    model.save_pretrained(target, safe_serialization=True, max_shard_size=max_shard_size)


def fp8_weights(model):
    """Quantize the model's Linear weights (but UNQUANTIZED) to FP8 E4M3 in place, each output channel scaled by its
    largest magnitude / 448; returns the compressor whose `update_config(DIR)` records the scheme."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])

    def scale_of(name, module):
        weight = module.weight.float()
        return calculate_qparams(weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True), scheme.weights)[0]

    return _compressed(model, scheme, "float-quantized", UNQUANTIZED, scale_of)


def check_model(method: str, config) -> None:
    """Refuse, before any weights are merged, a model the method cannot quantize: a mixture of experts (transformers
    5 holds its experts as fused 3-D weights, not Linear layers, so every method here would leave the bulk of the
    model unquantized), or a model AWQ does not know how to scale."""
    from .awq import MODEL_TYPES

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, key, None) for key in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise UserError(f"--quant_method {method}: {config.model_type} is a mixture of experts, whose expert weights "
                        "transformers holds fused (not as Linear layers) and no method here quantizes; export it "
                        "unquantized (drop --quant_method)")
    if method == "awq" and config.model_type not in MODEL_TYPES:
        raise UserError(f"--quant_method awq scales the layers of {', '.join(MODEL_TYPES)} models, not "
                        f"{config.model_type}; use --quant_method gptq (the same int4 format)")


def fitted_weights(model, method: str, rows: list[list[int]], bits: int, progress=None):
    """GPTQ (export/gptq.py) or AWQ (export/awq.py) on the decoder's Linear layers (but the MoE routers) with `rows`
    (token ids) as calibration data: symmetric int4 in groups of group_size() input columns, or int8 per output
    channel; stored packed in the compressed-tensors format. Returns the compressor whose `update_config(DIR)`
    records the scheme."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams, calculate_range

    from . import awq, gptq

    group = group_size(model.config) if bits == 4 else None
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group" if group else "channel",
                            group_size=group)
    bit_min, bit_max = (int(b) for b in calculate_range(args, "cpu"))
    router = re.compile(UNQUANTIZED[1].removeprefix("re:"))
    algorithm = gptq if method == "gptq" else awq
    scales = algorithm.quantize_model(model, rows, bit_min, bit_max, group,
                                      lambda lo, hi: calculate_qparams(lo, hi, args)[0],
                                      skip=lambda name: bool(router.match(name)), progress=progress)
    ignore = [name for name, module in model.named_modules()  # exactly the layers quantized above are stored so
              if isinstance(module, torch.nn.Linear) and name not in scales]
    return _compressed(model, QuantizationScheme(targets=["Linear"], weights=args), "pack-quantized", ignore,
                       lambda name, module: scales[name])


def _compressed(model, scheme, layout: str, ignore: list[str], scale_of):
    """`scheme` on the model's Linear layers (but `ignore`), their scales from scale_of(name, module), compressed
    in place by compressed-tensors into `layout`; returns the compressor (its update_config(DIR) writes the
    quantization_config, quant_method "compressed-tensors", that vLLM and transformers read)."""
    _quiet_import("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config

    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore,
                                                        quantization_status=QuantizationStatus.INITIALIZED))
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                module.weight_scale.copy_(scale_of(name, module).to(module.weight_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=layout)
    compressor.compress_model(model)
    return compressor


def reload(directory: Path):
    """The quantized export as a user loads it: plain from_pretrained, no swiftlike involved."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, device_map={"": accel.device()})
