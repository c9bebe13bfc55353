"""Qwen2.5 (Instruct, Coder) and QwQ (configs from the model cards' config.json).

Their tokenizers are Qwen's byte-level BPE (the one bundled for Qwen3) with their own added tokens: Qwen2.5 has
the first 22 of Qwen3's 26 (no <tool_response>, </tool_response>, <think>, </think>), QwQ all 26.
"""
from .core import TokenizerSpec, register_family, register_tokenizer

_SIZES = ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
_REQ = ("transformers>=4.37",)

_QWEN_ADDED = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
              "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
              "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
              "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")  # ids 151643..151664
_QWEN_PLAIN = _QWEN_ADDED[14:]  # not special: <tool_call> ... <|file_sep|>
_QWEN3_EXTRA = ("<tool_response>", "</tool_response>", "<think>", "</think>")  # ids 151665..151668

register_tokenizer(TokenizerSpec("qwen2_5", "Qwen2.5", "qwen3", True, _QWEN_ADDED, _QWEN_PLAIN,
                                 eos="<|im_end|>", pad="<|endoftext|>"))
register_tokenizer(TokenizerSpec("qwq", "QwQ", "qwen3", True, _QWEN_ADDED + _QWEN3_EXTRA, _QWEN_PLAIN + _QWEN3_EXTRA,
                                 eos="<|im_end|>", pad="<|endoftext|>"))

_BASE = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", rms_norm_eps=1e-6,
             rope_theta=1000000.0, max_position_embeddings=32768, use_sliding_window=False, attention_dropout=0.0,
             bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16")
# size: (hidden, layers, heads, kv_heads, intermediate, vocab, tie_embeddings); q/k/v projections carry a bias
_DIMS = {
    "0.5B": (896, 24, 14, 2, 4864, 151936, True),
    "1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "3B": (2048, 36, 16, 2, 11008, 151936, True),
    "7B": (3584, 28, 28, 4, 18944, 152064, False),
    "14B": (5120, 48, 40, 8, 13824, 152064, False),
    "32B": (5120, 64, 40, 8, 27648, 152064, False),
    "72B": (8192, 80, 64, 8, 29568, 152064, False),
}


def _config(size: str, **extra) -> dict:
    h, layers, heads, kv, inter, vocab, tie = _DIMS[size]
    return {**_BASE, **dict(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                            tie_word_embeddings=tie), **extra}


_EPS = {"14B": 1e-5, "32B": 1e-5}  # the larger Qwen2.5 models use 1e-5
register_family("qwen2_5", "qwen2", "Qwen2ForCausalLM", "qwen2_5",
                {f"Qwen/Qwen2.5-{s}-Instruct": _config(s, rms_norm_eps=_EPS.get(s, 1e-6)) for s in _SIZES},
                requires=_REQ, tokenizer="qwen2_5")
register_family("qwen2_5", "qwen2", "Qwen2ForCausalLM", "qwen2_5",
                {f"Qwen/Qwen2.5-Coder-{s}-Instruct": _config(s, rms_norm_eps=_EPS.get(s, 1e-6))
                 for s in _SIZES[:-1]}, requires=_REQ, tokenizer="qwen2_5")
register_family("qwq", "qwen2", "Qwen2ForCausalLM", "qwq",
                {"Qwen/QwQ-32B": _config("32B", rms_norm_eps=1e-5, max_position_embeddings=40960)},
                requires=_REQ, tokenizer="qwq")
