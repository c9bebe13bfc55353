"""A LoRA merge that streams: base tensors are read one at a time from the safetensors shards, the adapter's
update is added to the weights it targets, and output shards (or a GGUF file, export/gguf.py) are written as they
fill. Peak memory is one output shard (`--max_shard_size`; for GGUF one tensor) plus the adapter, not the model,
so a model larger than the machine's memory exports.

W' = W + scale * B @ A with PEFT's scale (lora_alpha / r, or / sqrt(r) under rsLoRA); under DoRA each row is then
rescaled to its learned magnitude, W' = m / ||W + scale * B @ A||_row * (W + scale * B @ A), as PEFT merges it;
computed in fp32 and cast to the export dtype once. A QLoRA adapter was trained against the NF4 base, so every weight
transformers quantizes when it loads the base in 4 bits (the same set: `nf4_weights`) goes through NF4 and back
first, tensor by tensor. What this form does not cover goes through the in-memory merge (merge.py): per-module rank
or alpha patterns, LoRA on embeddings or fan-in-fan-out layers, saved modules (a reward head), new tokens' rows
(--new_special_tokens), vision-language models (transformers renames their checkpoint keys on loading), and bases
that are not safetensors.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import UserError, intact
from .merge import nf4_functional

ADAPTER_PREFIX = "base_model.model."
INDEX = "model.safetensors.index.json"


def stream_plan(adapter_dir: str, base_dir: str) -> tuple[dict, list[Path]] | str:
    """({base weight name: [A, B, scale, DoRA magnitude or None]}, the base's shards) when the merge can stream,
    else why not."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        return f"a {config.get('peft_type')} adapter"
    for key, why in (("fan_in_fan_out", "fan-in-fan-out layers"), ("rank_pattern", "rank patterns"),
                     ("alpha_pattern", "alpha patterns"), ("modules_to_save", "saved modules"),
                     ("trainable_token_indices", "new tokens' rows")):
        if config.get(key):
            return why
    shards = shards_of(Path(base_dir))
    if not shards:
        return "a base without safetensors weights"
    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        return "an adapter not saved as safetensors"
    from safetensors.torch import load_file

    with intact(adapter_dir):
        weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    dora = bool(config.get("use_dora"))
    pairs: dict[str, list] = {}
    for name, tensor in weights.items():
        parts = (".lora_A.weight", ".lora_B.weight") + ((".lora_magnitude_vector",) if dora else ())
        if not name.startswith(ADAPTER_PREFIX) or not name.endswith(parts):
            return f"adapter tensor {name}"
        module, _, part = name[len(ADAPTER_PREFIX):].rpartition(".lora_")
        pairs.setdefault(module + ".weight", [None, None, scale, None])[{"A": 0, "B": 1, "m": 3}[part[0]]] = tensor
    shapes = dict(tensor_shapes(shards))  # (a damaged shard is named here, before any work)
    missing = sorted(set(pairs) - set(shapes))
    if missing:
        return f"adapter weights for {missing[0]}, which the base checkpoint does not name"
    if "lm_head.weight" in pairs and _tied(base_dir):  # (a base may store the tied head too: merge.py unties it)
        return "a LoRA on the output layer of a model that ties it to the embedding"
    bad = next((n for n, (a, b, _, m) in pairs.items() if a is None or b is None or (dora and m is None)), None)
    if bad:
        raise UserError(f"--adapters {adapter_dir}: {bad} lacks part of its lora_A / lora_B"
                        f"{' / magnitude' if dora else ''}; the adapter is damaged")
    for name, (a, b, _, _) in pairs.items():
        if (b.shape[0], a.shape[1]) != shapes[name]:
            raise UserError(f"--adapters {adapter_dir} does not fit {base_dir}: {name} is {tuple(shapes[name])} there, "
                            f"the adapter's update {(b.shape[0], a.shape[1])} (another model's adapters?)")
    bad = next((n for n, parts in pairs.items() if not all(torch.isfinite(t).all() for t in parts[:2] + parts[3:]
                                                           if t is not None)), None)
    if bad:
        raise UserError(f"--adapters {adapter_dir} holds NaN or inf values ({bad}): the run diverged; nothing was "
                        "exported")
    return pairs, shards


def nf4_weights(base_dir: str, dtype: torch.dtype, trust_remote_code: bool = False) -> set[str]:
    """The weights transformers quantizes when it loads this base in 4 bits as QLoRA training does (models/loader.py):
    its own choice of modules, applied to an empty (meta) copy of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.quantizers.auto import AutoHfQuantizer

    nf4_functional()  # before any work: the merge cannot run without it
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    with torch.device("meta"):
        trusted = dict(trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir, **trusted), **trusted)
    AutoHfQuantizer.from_config(config)._process_model_before_weight_loading(model, device_map=None)
    return {f"{name}.weight" for name, module in model.named_modules() if type(module).__name__ == "Linear4bit"}


def _through_nf4(weight: torch.Tensor) -> torch.Tensor:
    """The weight as QLoRA saw it: NF4 with double quantization (bitsandbytes' defaults, 64-wide blocks) and back."""
    from .. import accel

    bnbf = nf4_functional()
    q, state = bnbf.quantize_4bit(weight.to(accel.device()), blocksize=64, compress_statistics=True, quant_type="nf4")
    return bnbf.dequantize_4bit(q, state).to("cpu", weight.dtype)


def merged_tensors(pairs: dict, shards: list[Path], dtype: torch.dtype, nf4: set[str] = frozenset()):
    """(name, tensor) of every base tensor with its adapter update merged, in `dtype`, one at a time in the shards'
    order. `nf4`: the weights a QLoRA adapter was trained against in 4 bits (nf4_weights)."""
    from safetensors import safe_open

    for path in shards:
        for key in _keys(path):
            # the file is opened per tensor: safetensors maps it into memory, and pages read through a mapping
            # stay resident until it closes, which would hold the whole base by the end of a shard
            with safe_open(str(path), framework="pt") as f:
                tensor = f.get_tensor(key)
            if key in nf4:
                tensor = _through_nf4(tensor.to(dtype))
            if key in pairs:
                a, b, scale, magnitude = pairs[key]
                tensor = tensor.float() + scale * (b.float() @ a.float())
                if magnitude is not None:  # DoRA
                    tensor = (magnitude.float() / torch.linalg.norm(tensor, dim=1))[:, None] * tensor
                tensor = tensor.to(dtype)
            elif tensor.is_floating_point():
                tensor = tensor.to(dtype)
            yield key, tensor


def tensor_shapes(shards: list[Path]) -> list[tuple[str, tuple]]:
    """(name, shape) of every tensor of the shards, in `merged_tensors`' order, from their headers (no data read)."""
    from safetensors import safe_open

    out = []
    for path in shards:
        with intact(path), safe_open(str(path), framework="pt") as f:
            out += [(key, tuple(f.get_slice(key).get_shape())) for key in f.keys()]
    return out


def stream_merge(pairs: dict, shards: list[Path], dtype: torch.dtype, directory: Path, max_shard_size: int,
                 progress=None, nf4: set[str] = frozenset()) -> int:
    """Write the merged weights into `directory` (model.safetensors, or shards and their index); the number of
    tensors written."""
    written, shard, size, files, index, total = 0, {}, 0, [], {}, 0

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            files.append(name)
            index.update(dict.fromkeys(shard, name))
            shard, size = {}, 0

    for key, tensor in merged_tensors(pairs, shards, dtype, nf4):
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_size:
            flush()
        shard[key], size, total = tensor.contiguous(), size + nbytes, total + nbytes
        written += 1
        if progress is not None:
            progress.update(1)
    flush()
    _name_shards(directory, files, index, total)
    return written


def save_file(tensors: dict, path: str, metadata: dict) -> None:
    from safetensors.torch import save_file as save

    save(tensors, path, metadata=metadata)


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', a number of bytes -> bytes (as transformers reads --max_shard_size)."""
    units = {"GIB": 2 ** 30, "MIB": 2 ** 20, "KIB": 2 ** 10, "GB": 10 ** 9, "MB": 10 ** 6, "KB": 10 ** 3, "B": 1}
    s = str(text).strip().upper()
    unit = next((u for u in units if s.endswith(u)), "")
    try:
        size = int(float(s[:len(s) - len(unit)]) * units[unit]) if unit else int(s)
    except (ValueError, OverflowError):  # not a number, or inf
        size = 0
    if size < 1:
        raise UserError(f"--max_shard_size {text!r} is not a size such as 5GB, 500MB or 2GiB")
    return size


def shards_of(base: Path) -> list[Path]:
    """A checkpoint's safetensors files (none when it has none)."""
    index = base / INDEX
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [base / n for n in sorted(set(names))]
    single = base / "model.safetensors"
    return [single] if single.is_file() else []


def _tied(base_dir: str) -> bool:
    """Whether the base's config ties its output layer to the input embedding (transformers' default)."""
    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    return bool(config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", True)))


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with intact(path), safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _name_shards(directory: Path, files: list[str], index: dict, total: int) -> None:
    """One file is model.safetensors; several are model-0000k-of-0000n.safetensors with their index."""
    if len(files) == 1:
        (directory / files[0]).rename(directory / "model.safetensors")
        return
    names = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
    for old, new in names.items():
        (directory / old).rename(directory / new)
    body = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in sorted(index.items())}}
    (directory / INDEX).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
