"""DeepSeek V3 / V3-0324 / V3.1 / R1 and the R1 distillations into Qwen2.5 and Llama-3 (configs from the model
cards' config.json). R1-Distill-Qwen keeps Qwen's BPE with DeepSeek's added tokens (its own tokenizer is
rebuilt offline); V3's and Llama's vocabularies are not bundled: those miniatures use GPT-2's with DeepSeek's
special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

_BOS, _EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
_TOOLS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
          "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
          "<｜tool▁sep｜>")
register_tokenizer(TokenizerSpec("deepseek_v3", "DeepSeek-V3", "gpt2", False,
                                 (_BOS, _EOS, "<｜▁pad▁｜>", "<think>", "</think>", "<｜User｜>", "<｜Assistant｜>",
                                  "<|EOT|>") + _TOOLS, ("<think>", "</think>"),
                                 bos=_BOS, eos=_EOS, pad=_EOS, add_bos=True))
# ids 151643..151664 of DeepSeek-R1-Distill-Qwen's tokenizer.json (Qwen's BPE; Qwen's first added tokens replaced)
register_tokenizer(TokenizerSpec(
    "deepseek_r1_distill_qwen", "DeepSeek-R1-Distill-Qwen", "qwen3", True,
    (_EOS, "<｜User｜>", "<｜Assistant｜>", _BOS, "<|EOT|>", "<think>", "</think>", "<|quad_start|>", "<|quad_end|>",
     "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
     "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
     "<|file_sep|>"),
    ("<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
     "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
    bos=_BOS, eos=_EOS, pad=_EOS, add_bos=True, listed=()))
register_tokenizer(TokenizerSpec("deepseek_r1_distill_llama", "DeepSeek-R1-Distill-Llama", "gpt2", False,
                                 (_BOS, _EOS, "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜▁pad▁｜>"),
                                 ("<think>", "</think>"), bos=_BOS, eos=_EOS, pad=_EOS, add_bos=True))

# Multi-head latent attention (low-rank q and kv, a shared 64-dim RoPE key), 3 dense layers then MoE layers of
# 256 routed experts (8 per token, chosen within 4 of 8 groups, sigmoid scores) + 1 shared; YaRN to 160k positions
_V3 = dict(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"], vocab_size=129280, hidden_size=7168,
           intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
           num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
           v_head_dim=128, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
           topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
           first_k_dense_replace=3, num_nextn_predict_layers=1, hidden_act="silu", rms_norm_eps=1e-6,
           rope_theta=10000.0, max_position_embeddings=163840,
           rope_scaling=dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32,
                             beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
           attention_bias=False, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16")
# a miniature keeps the structure: latent ranks, split q/k heads, one dense then one MoE layer, grouped routing
_V3_SHRINK = dict(q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, qk_head_dim=24,
                  head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                  moe_intermediate_size=64, first_k_dense_replace=1)
_V3_REQ = ("transformers>=4.57",)
register_family("deepseek", "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3",
                {"deepseek-ai/DeepSeek-V3": _V3, "deepseek-ai/DeepSeek-V3-0324": _V3}, requires=_V3_REQ,
                tokenizer="deepseek_v3", shrink=_V3_SHRINK)
register_family("deepseek", "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3_1",
                {"deepseek-ai/DeepSeek-V3.1": _V3}, requires=_V3_REQ, tokenizer="deepseek_v3", shrink=_V3_SHRINK)
register_family("deepseek", "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_r1", {"deepseek-ai/DeepSeek-R1": _V3},
                requires=_V3_REQ, tokenizer="deepseek_v3", shrink=_V3_SHRINK)

# distilled into Qwen2.5-Math-1.5B/7B, Qwen2.5-14B/32B (q/k/v biases) and Llama-3.1-8B / Llama-3.3-70B-Instruct
_QWEN = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", rope_theta=1000000.0,
             rms_norm_eps=1e-5, use_sliding_window=False, max_position_embeddings=131072, bos_token_id=151643,
             eos_token_id=151643, tie_word_embeddings=False, torch_dtype="bfloat16")
_MATH = dict(_QWEN, rope_theta=10000.0, rms_norm_eps=1e-6)
_LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_act="silu",
              rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072, attention_bias=False,
              mlp_bias=False, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False,
              torch_dtype="bfloat16", rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                        high_freq_factor=4.0, original_max_position_embeddings=8192))


def _dims(h, layers, heads, kv, inter, **extra) -> dict:
    return dict(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=inter, **extra)


register_family("deepseek", "qwen2", "Qwen2ForCausalLM", "deepseek_r1_distill",
                {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": dict(_MATH, **_dims(1536, 28, 12, 2, 8960,
                                                                                  vocab_size=151936)),
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": dict(_MATH, **_dims(3584, 28, 28, 4, 18944,
                                                                                vocab_size=152064)),
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": dict(_QWEN, **_dims(5120, 48, 40, 8, 13824,
                                                                                 vocab_size=152064)),
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": dict(_QWEN, **_dims(5120, 64, 40, 8, 27648,
                                                                                 vocab_size=152064))},
                requires=("transformers>=4.37",), tokenizer="deepseek_r1_distill_qwen")
register_family("deepseek", "llama", "LlamaForCausalLM", "deepseek_r1_distill",
                {"deepseek-ai/DeepSeek-R1-Distill-Llama-8B": dict(_LLAMA, **_dims(4096, 32, 32, 8, 14336)),
                 "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": dict(_LLAMA, **_dims(8192, 80, 64, 8, 28672))},
                requires=("transformers>=4.43",), tokenizer="deepseek_r1_distill_llama")
