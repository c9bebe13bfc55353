"""GGUF (llama.cpp, Ollama, LM Studio) from a merged model, or tensor by tensor as a streamed merge produces them
(export/stream.py), written with the maintained `gguf` package; only the mapping from a Hugging Face model is
ours: hyperparameters, tensor names (gguf's own name map), the Q/K row order llama.cpp expects for Llama, and the
tokenizer metadata (tokens, types, merges, special ids, chat template).

Written architectures: Qwen3, Qwen2 / Qwen2.5 (and QwQ, R1-Distill-Qwen), Llama-3 and Llama-3.1+ (their "llama3"
RoPE scaling becomes llama.cpp's per-frequency `rope_freqs` tensor). Gemma, Phi, Mistral, MoE models and other
RoPE scalings are refused: their GGUF cannot be verified here by an independent reader.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

GGUF_TYPES = ("f16", "q8_0")
# model_type -> (gguf architecture, llama.cpp pre-tokenizer name)
_ARCH = {"qwen3": ("QWEN3", "qwen2"), "qwen2": ("QWEN2", "qwen2"), "llama": ("LLAMA", "llama-bpe")}


def check_supported(config) -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError("--to gguf needs the gguf package: pip install 'swiftlike[gguf]'")
    model_type = config.model_type
    if model_type not in _ARCH:
        raise UserError(f"--to gguf writes {', '.join(sorted(_ARCH))} models, not {model_type}; export the merged "
                        "Hugging Face model and convert it with llama.cpp's convert_hf_to_gguf.py")
    rope = _rope_scaling(config)
    if rope is not None and rope.get("rope_type", rope.get("type")) != "llama3":
        raise UserError(f"--to gguf: {rope.get('rope_type', rope.get('type'))!r} RoPE scaling is not written (only "
                        "Llama-3.1's llama3 scaling); export the merged Hugging Face model and convert it with "
                        "llama.cpp's convert_hf_to_gguf.py")


def _rope_scaling(config) -> dict | None:
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    return None if kind in (None, "default") else rope


def rope_factors(config, head_dim: int) -> np.ndarray | None:
    """llama.cpp's `rope_freqs` for Llama-3.1's "llama3" scaling: per rotary frequency, the number its base
    frequency is divided by — 1 for short wavelengths (under original_context / high_freq_factor), `factor` for
    long ones (over original_context / low_freq_factor), and in between a blend smooth in the wavelength."""
    rope = _rope_scaling(config)
    if rope is None:
        return None
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    context = float(rope["original_max_position_embeddings"])
    wavelength = 2 * np.pi * _rope_theta(config) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = (context / wavelength - low) / (high - low)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    factors = np.where(wavelength < context / high, 1.0, np.where(wavelength > context / low, factor, blended))
    return factors.astype(np.float32)


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def write_gguf(model, tokenizer, template, path: Path, gguf_type: str, name: str, shown=()) -> Path:
    """The GGUF of a model in memory."""
    state = model.state_dict()
    return write_gguf_tensors(model.config, [(k, tuple(v.shape)) for k, v in state.items()], iter(state.items()),
                              tokenizer, template, path, gguf_type, name, shown=shown)


def write_gguf_tensors(config, shapes: list[tuple[str, tuple]], tensors, tokenizer, template, path: Path,
                       gguf_type: str, name: str, progress=None, shown=()) -> Path:
    """The GGUF of a model given as its tensors' (Hugging Face name, shape) list and an iterator over (name, tensor)
    in the same order — e.g. merged one at a time from safetensors shards (export/stream.py): the file's layout is
    written from the shapes first, then each tensor as it comes, so no more than one tensor is held at a time.
    `shown`: ids of special tokens a run added (--new_special_tokens), written as user-defined tokens (llama.cpp
    prints those; it hides control tokens)."""
    import gguf

    check_supported(config)
    arch_name, pre = _ARCH[config.model_type]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_tokenizer(writer, gguf, tokenizer, template, config.vocab_size, pre, set(shown))
    factors = rope_factors(config, head_dim)
    if factors is not None:
        writer.add_tensor_info(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.shape,
                               factors.dtype, factors.nbytes)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    kinds = {}
    for hf_name, shape in shapes:
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output layer from token_embd when it is tied
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"--to gguf: no GGUF name for tensor {hf_name} of {config.model_type}")
        kinds[hf_name] = kind = _kind(shape, gguf_type)
        if kind == "q8_0":
            quant = gguf.GGMLQuantizationType.Q8_0
            raw = gguf.quant_shape_to_byte_shape(shape, quant)
            writer.add_tensor_info(gguf_name, raw, np.dtype(np.uint8), int(np.prod(raw)), raw_dtype=quant)
        else:
            dtype = np.dtype(np.float32 if kind == "f32" else np.float16)
            writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    if factors is not None:
        writer.write_tensor_data(factors)
    for hf_name, tensor in tensors:
        if hf_name in kinds:
            writer.write_tensor_data(_gguf_array(gguf, hf_name, tensor, config, kinds.pop(hf_name)))
        if progress is not None:
            progress.update(1)
    if kinds:
        raise RuntimeError(f"--to gguf: tensor {next(iter(kinds))} was planned but never came")
    writer.close()
    return path


def _kind(shape, gguf_type: str) -> str:
    """How a tensor is stored: norms and biases (1-D) in f32, as llama.cpp keeps them; matrices in f16, or q8_0
    where their rows split into 32-wide blocks."""
    if len(shape) == 1:
        return "f32"
    return "q8_0" if gguf_type == "q8_0" and shape[-1] % 32 == 0 else "f16"


def _gguf_array(gguf, hf_name: str, tensor: torch.Tensor, config, kind: str) -> np.ndarray:
    data = tensor.detach().to(torch.float32)
    if config.model_type == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
        data = _interleave_rope_rows(data, heads)
    array = data.numpy()
    if kind == "q8_0":
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
    return array.astype(np.float32 if kind == "f32" else np.float16)


def _interleave_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face Llama stores each head's rotary halves one after the other; llama.cpp expects them
    interleaved (pairs of adjacent rows)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tokenizer(writer, gguf, tokenizer, template, vocab_size: int, pre: str, shown: set) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise UserError(f"--to gguf writes byte-level BPE tokenizers, not {backend['model']['type']}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t["id"]: t for t in backend.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            extra = added.get(i)
            types.append(gguf.TokenType.NORMAL if extra is None else
                         gguf.TokenType.CONTROL if extra.get("special") and i not in shown else
                         gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2" if _gpt2_pre_tokenizer(backend) else pre)  # llama.cpp's name for it
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    stops = list(template.stop_token_ids) or [tokenizer.eos_token_id]
    writer.add_eos_token_id(stops[0])
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    added_ids = tokenizer("a")["input_ids"]  # what the tokenizer adds, whichever attribute or post-processor does it
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and added_ids[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and added_ids[-1:] == [tokenizer.eos_token_id])
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _gpt2_pre_tokenizer(backend: dict) -> bool:
    """GPT-2's own splitting (a ByteLevel pre-tokenizer with its built-in regex): miniature stand-in vocabularies."""
    pre = backend.get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def modelfile(gguf_name: str, template, tokenizer) -> str:
    """An Ollama Modelfile: the GGUF, the chat template (from the GGUF's own metadata) and the stop strings."""
    stops = [tokenizer.convert_ids_to_tokens(i) for i in template.stop_token_ids]
    lines = [f"FROM ./{gguf_name}"] + [f'PARAMETER stop "{s}"' for s in stops if s]
    return "\n".join(lines) + "\n"
