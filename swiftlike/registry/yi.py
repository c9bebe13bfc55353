"""Yi-1.5 chat models (Llama architecture; configs from the model cards' config.json). Yi's SentencePiece
vocabulary is not bundled: miniatures use GPT-2's with Yi's special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

register_tokenizer(TokenizerSpec(
    "yi", "Yi-1.5", "gpt2", False,
    ("<unk>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>"),
    bos="<|startoftext|>", eos="<|im_end|>", pad="<unk>", unk="<unk>"))

_BASE = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=64000, hidden_act="silu",
             rms_norm_eps=1e-6, rope_theta=5000000.0, max_position_embeddings=4096, attention_bias=False,
             mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
             torch_dtype="bfloat16")
# size: (hidden, layers, heads, kv_heads, intermediate)
_DIMS = {"6B": (4096, 32, 32, 4, 11008), "9B": (4096, 48, 32, 4, 11008), "34B": (7168, 60, 56, 8, 20480)}


def _config(size: str) -> dict:
    h, layers, heads, kv, inter = _DIMS[size]
    return dict(_BASE, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=inter)


register_family("yi", "llama", "LlamaForCausalLM", "yi1_5", {f"01-ai/Yi-1.5-{s}-Chat": _config(s) for s in _DIMS},
                "01ai", ("transformers>=4.37",), tokenizer="yi")
