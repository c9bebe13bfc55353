"""GLM-4-9B-chat (ModelScope: ZhipuAI). The -hf checkpoint loads natively in transformers (GlmForCausalLM, from
transformers 4.46); the original runs its own ChatGLMModel code (--trust_remote_code). Both are one network: its
miniature is built as GlmForCausalLM. GLM-4's tiktoken-based vocabulary is not bundled: miniatures use GPT-2's
with GLM-4's special tokens."""
from .core import TokenizerSpec, register_family, register_tokenizer

register_tokenizer(TokenizerSpec("glm4", "GLM-4", "gpt2", False,
                                 ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                                  "<|user|>", "<|assistant|>", "<|observation|>"),
                                 eos="<|endoftext|>", pad="<|endoftext|>"))

# multi-query groups of 2 heads, RoPE (base 10000 * rope_ratio 500) on half of each 128-dim head, q/k/v biases
_GLM4_9B = dict(model_type="glm", architectures=["GlmForCausalLM"], vocab_size=151552, hidden_size=4096,
                num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                intermediate_size=13696, partial_rotary_factor=0.5, rope_theta=5000000.0, attention_bias=True,
                rms_norm_eps=1.5625e-07, hidden_act="silu", max_position_embeddings=131072,
                tie_word_embeddings=False, pad_token_id=151329, eos_token_id=[151329, 151336, 151338],
                torch_dtype="bfloat16")

register_family("glm", "chatglm", "ChatGLMModel", "glm4", {"THUDM/glm-4-9b-chat": _GLM4_9B}, "ZhipuAI",
                ("trust_remote_code",), tokenizer="glm4",
                note="built as GlmForCausalLM, the in-library form of the same network "
                     "(THUDM/glm-4-9b-chat-hf); the remote-code ChatGLMModel names its modules differently "
                     "(query_key_value, dense_h_to_4h), so --target_modules that name those do not apply to it")
register_family("glm", "glm", "GlmForCausalLM", "glm4", {"THUDM/glm-4-9b-chat-hf": _GLM4_9B}, "ZhipuAI",
                ("transformers>=4.46",), tokenizer="glm4")
