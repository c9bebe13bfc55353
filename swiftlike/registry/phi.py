"""Phi-3.5-mini-instruct and Phi-4 (configs from the model cards' config.json). Their vocabularies (Llama-2
SentencePiece, tiktoken cl100k) are not bundled: miniatures use GPT-2's with each model's special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

_MS = "LLM-Research"
register_tokenizer(TokenizerSpec("phi3_5", "Phi-3.5", "gpt2", False,
                                 ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                                  "<|user|>"),
                                 bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>"))
register_tokenizer(TokenizerSpec("phi4", "Phi-4", "gpt2", False,
                                 ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|dummy_85|>"),
                                 bos="<|endoftext|>", eos="<|im_end|>", pad="<|dummy_85|>"))

_BASE = dict(model_type="phi3", architectures=["Phi3ForCausalLM"], hidden_act="silu", rms_norm_eps=1e-5,
             tie_word_embeddings=False, torch_dtype="bfloat16")  # fused qkv_proj and gate_up_proj, no biases
# Phi-3.5-mini: multi-head attention, LongRoPE from 4k to 128k positions. Its per-dimension factors are fitted to
# 96-dim heads; the loader gives a miniature unit factors of its own head size (same code path, no real factors).
_PHI3_5 = dict(_BASE, vocab_size=32064, hidden_size=3072, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=8192, max_position_embeddings=131072,
               original_max_position_embeddings=4096, rope_theta=10000.0, rope_scaling={"rope_type": "longrope"},
               sliding_window=262144, bos_token_id=1, eos_token_id=32000, pad_token_id=32000)
_PHI4 = dict(_BASE, vocab_size=100352, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
             num_key_value_heads=10, intermediate_size=17920, max_position_embeddings=16384,
             original_max_position_embeddings=16384, rope_theta=250000.0, rope_scaling=None, sliding_window=None,
             bos_token_id=100257, eos_token_id=100265, pad_token_id=100349)

register_family("phi", "phi3", "Phi3ForCausalLM", "phi3_5", {"microsoft/Phi-3.5-mini-instruct": _PHI3_5}, _MS,
                ("transformers>=4.43",), tokenizer="phi3_5")
register_family("phi", "phi3", "Phi3ForCausalLM", "phi4", {"microsoft/phi-4": _PHI4}, _MS, ("transformers>=4.47",),
                tokenizer="phi4")
