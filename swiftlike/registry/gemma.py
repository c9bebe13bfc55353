"""Gemma-2 and Gemma-3 instruction-tuned models (text use); configs from the model cards' config.json.
Gemma's SentencePiece vocabulary is not bundled: miniatures use GPT-2's with Gemma's special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

_MS = "LLM-Research"
register_tokenizer(TokenizerSpec("gemma", "Gemma", "gpt2", False,
                                 ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                                 bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True))
# the attention scale follows head_dim (query_pre_attn_scalar) in a miniature too
_SHRINK = dict(query_pre_attn_scalar=16)

# Gemma-2: logits soft-capped (attention 50, final 30), sliding-window (4096) and global layers alternate
_GEMMA2 = dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], vocab_size=256000,
               hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
               max_position_embeddings=8192, sliding_window=4096, final_logit_softcapping=30.0,
               attn_logit_softcapping=50.0, attention_bias=False, tie_word_embeddings=True, bos_token_id=2,
               eos_token_id=[1, 107], pad_token_id=0, torch_dtype="bfloat16")
# size: (hidden, layers, heads, kv_heads, head_dim, intermediate, query_pre_attn_scalar)
_GEMMA2_DIMS = {"2b": (2304, 26, 8, 4, 256, 9216, 256), "9b": (3584, 42, 16, 8, 256, 14336, 256),
                "27b": (4608, 46, 32, 16, 128, 36864, 144)}
# Gemma-3: five sliding-window layers (local RoPE base 10k) per global layer (base 1M), no soft-capping
_GEMMA3_TEXT = dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=1000000.0,
                    rope_local_base_freq=10000.0, sliding_window_pattern=6, final_logit_softcapping=None,
                    attn_logit_softcapping=None, attention_bias=False, bos_token_id=2, eos_token_id=[1, 106],
                    pad_token_id=0)
_GEMMA3_DIMS = {"1b": (1152, 26, 4, 1, 256, 6912, 256), "4b": (2560, 34, 8, 4, 256, 10240, 256),
                "12b": (3840, 48, 16, 8, 256, 15360, 256), "27b": (5376, 62, 32, 16, 128, 21504, 168)}
# Gemma-3 4b/12b/27b: the text model above (128k positions: global RoPE scaled linearly by 8) + a SigLIP encoder
_SIGLIP = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
               num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False)


def _dims(h, layers, heads, kv, head_dim, inter, scalar) -> dict:
    return dict(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                head_dim=head_dim, intermediate_size=inter, query_pre_attn_scalar=scalar)


def _gemma3(size: str) -> dict:
    text = dict(_GEMMA3_TEXT, model_type="gemma3_text", vocab_size=262208, sliding_window=1024,
                max_position_embeddings=131072, rope_scaling={"rope_type": "linear", "factor": 8.0},
                **_dims(*_GEMMA3_DIMS[size]))
    return dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"], text_config=text,
                vision_config=_SIGLIP, mm_tokens_per_image=256, boi_token_index=255999, eoi_token_index=256000,
                image_token_index=262144, eos_token_id=[1, 106], tie_word_embeddings=True, torch_dtype="bfloat16")


register_family("gemma", "gemma2", "Gemma2ForCausalLM", "gemma2",
                {f"google/gemma-2-{s}-it": dict(_GEMMA2, **_dims(*d)) for s, d in _GEMMA2_DIMS.items()}, _MS,
                ("transformers>=4.42",), tokenizer="gemma", shrink=_SHRINK)
register_family("gemma", "gemma3_text", "Gemma3ForCausalLM", "gemma3",
                {"google/gemma-3-1b-it": dict(_GEMMA3_TEXT, model_type="gemma3_text",
                                              architectures=["Gemma3ForCausalLM"], vocab_size=262144,
                                              sliding_window=512, max_position_embeddings=32768,
                                              rope_scaling=None, tie_word_embeddings=True, torch_dtype="bfloat16",
                                              **_dims(*_GEMMA3_DIMS["1b"]))}, _MS,
                ("transformers>=4.50",), tokenizer="gemma", shrink=_SHRINK)
register_family("gemma", "gemma3", "Gemma3ForConditionalGeneration", "gemma3",
                {f"google/gemma-3-{s}-it": _gemma3(s) for s in ("4b", "12b", "27b")}, _MS, ("transformers>=4.50",),
                tokenizer="gemma", shrink=_SHRINK)
