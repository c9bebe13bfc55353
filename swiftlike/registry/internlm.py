"""InternLM2.5-chat and InternLM3-instruct (configs from the model cards' config.json). Their modelling code ships
with the checkpoints (--trust_remote_code). Both are Llama networks: InternLM3 is built by transformers' own
`internlm3` type (the Llama implementation); InternLM2's fused wqkv / w1-w3 layout has no in-library class, so its
miniature is the same network in Llama layout (what InternLM's convert2llama produces). InternLM's SentencePiece
vocabularies are not bundled: miniatures use GPT-2's with InternLM's special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

_MS = "Shanghai_AI_Laboratory"
register_tokenizer(TokenizerSpec("internlm", "InternLM", "gpt2", False,
                                 ("<unk>", "<s>", "</s>", "<|plugin|>", "<|interpreter|>", "<|action_end|>",
                                  "<|action_start|>", "<|im_end|>", "<|im_start|>"),
                                 bos="<s>", eos="</s>", pad="</s>", unk="<unk>", add_bos=True))

_LLAMA = dict(hidden_act="silu", rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False, bos_token_id=1,
              eos_token_id=2, pad_token_id=2, tie_word_embeddings=False, torch_dtype="bfloat16")
# InternLM2.5: RoPE base 1M with dynamic NTK scaling (factor 2) to 32k positions
_INTERNLM2_5 = dict(_LLAMA, model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=92544,
                    rope_theta=1000000.0, rope_scaling={"rope_type": "dynamic", "factor": 2.0},
                    max_position_embeddings=32768)
_INTERNLM3 = dict(_LLAMA, model_type="internlm3", architectures=["InternLM3ForCausalLM"], vocab_size=128512,
                  hidden_size=4096, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                  intermediate_size=10240, rope_theta=50000000.0, rope_scaling={"rope_type": "dynamic", "factor": 6.0},
                  max_position_embeddings=32768)

register_family("internlm", "internlm2", "InternLM2ForCausalLM", "internlm2_5",
                {"internlm/internlm2_5-7b-chat": dict(_INTERNLM2_5, hidden_size=4096, num_hidden_layers=32,
                                                      num_attention_heads=32, num_key_value_heads=8,
                                                      intermediate_size=14336),
                 "internlm/internlm2_5-20b-chat": dict(_INTERNLM2_5, hidden_size=6144, num_hidden_layers=48,
                                                       num_attention_heads=48, num_key_value_heads=8,
                                                       intermediate_size=16384)}, _MS, ("trust_remote_code",),
                tokenizer="internlm",
                note="InternLM2's remote-code class (fused wqkv, w1/w2/w3) has no in-library twin: the miniature is "
                     "the same network in Llama layout (LlamaForCausalLM, as InternLM's convert2llama writes it), so "
                     "--target_modules that name wqkv/w1/w2/w3 do not apply to it")
register_family("internlm", "internlm3", "InternLM3ForCausalLM", "internlm2_5",
                {"internlm/internlm3-8b-instruct": _INTERNLM3}, _MS, ("trust_remote_code",), tokenizer="internlm")
