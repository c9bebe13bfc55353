"""Llama-3, 3.1, 3.2 and 3.3 Instruct (ModelScope mirrors under LLM-Research); configs from the model cards'
config.json. Llama's tiktoken-based vocabulary is not bundled: miniatures use GPT-2's with Llama's special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

_MS = "LLM-Research"

register_tokenizer(TokenizerSpec(
    "llama3", "Llama-3", "gpt2", False,
    ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>", "<|end_header_id|>",
     "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
    bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True))

_BASE = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_act="silu",
             rms_norm_eps=1e-5, rope_theta=500000.0, attention_bias=False, mlp_bias=False, bos_token_id=128000,
             tie_word_embeddings=False, torch_dtype="bfloat16")
# Llama-3.1+ stretch RoPE from 8k to 128k positions ("llama3" scaling); 3.2's small models by 32 instead of 8
_ROPE_3_1 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
# size: (hidden, layers, heads, kv_heads, intermediate)
_DIMS = {"1B": (2048, 16, 32, 8, 8192), "3B": (3072, 28, 24, 8, 8192), "8B": (4096, 32, 32, 8, 14336),
        "70B": (8192, 80, 64, 8, 28672), "405B": (16384, 126, 128, 8, 53248)}


def _config(size: str, **extra) -> dict:
    h, layers, heads, kv, inter = _DIMS[size]
    return {**_BASE, **dict(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=kv, intermediate_size=inter), **extra}


_V3 = dict(max_position_embeddings=8192, eos_token_id=128009)
_V3_1 = dict(max_position_embeddings=131072, rope_scaling=_ROPE_3_1, eos_token_id=[128001, 128008, 128009])
_V3_2 = dict(_V3_1, rope_scaling=dict(_ROPE_3_1, factor=32.0), tie_word_embeddings=True)

register_family("llama3", "llama", "LlamaForCausalLM", "llama3",
                {"meta-llama/Meta-Llama-3-8B-Instruct": _config("8B", **_V3),
                 "meta-llama/Meta-Llama-3-70B-Instruct": _config("70B", **_V3)}, _MS,
                ("transformers>=4.40",), tokenizer="llama3")
register_family("llama3", "llama", "LlamaForCausalLM", "llama3_1",
                {"meta-llama/Llama-3.1-8B-Instruct": _config("8B", **_V3_1),
                 "meta-llama/Llama-3.1-70B-Instruct": _config("70B", **_V3_1),
                 "meta-llama/Llama-3.1-405B-Instruct": _config("405B", **_V3_1),
                 "meta-llama/Llama-3.3-70B-Instruct": _config("70B", **_V3_1)}, _MS,
                ("transformers>=4.43",), tokenizer="llama3")
register_family("llama3", "llama", "LlamaForCausalLM", "llama3_2",
                {"meta-llama/Llama-3.2-1B-Instruct": _config("1B", head_dim=64, **_V3_2),
                 "meta-llama/Llama-3.2-3B-Instruct": _config("3B", head_dim=128, **_V3_2)}, _MS,
                ("transformers>=4.45",), tokenizer="llama3")
