"""Mistral-7B-Instruct-v0.3, Mistral-Nemo-Instruct-2407, Mixtral-8x7B-Instruct-v0.1 and Mistral-Small-3.2
(configs from the model cards' config.json). Mistral's SentencePiece / Tekken vocabularies are not bundled:
miniatures use GPT-2's with the special tokens of each tokenizer version (v1 has no control tokens: its
[INST] is plain text)."""
from .core import TokenizerSpec, register_family, register_tokenizer

_MS = "AI-ModelScope"
_V3_CONTROL = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
               "[/TOOL_RESULTS]")
register_tokenizer(TokenizerSpec("mistral_v1", "Mistral v1", "gpt2", False, ("<unk>", "<s>", "</s>"),
                                 bos="<s>", eos="</s>", unk="<unk>", add_bos=True))
register_tokenizer(TokenizerSpec("mistral_v3", "Mistral v3", "gpt2", False, ("<unk>", "<s>", "</s>") + _V3_CONTROL,
                                 bos="<s>", eos="</s>", unk="<unk>", add_bos=True))
register_tokenizer(TokenizerSpec("mistral_tekken", "Mistral Tekken", "gpt2", False,
                                 ("<unk>", "<s>", "</s>") + _V3_CONTROL + ("<pad>",),
                                 bos="<s>", eos="</s>", unk="<unk>", add_bos=True))

_BASE = dict(model_type="mistral", architectures=["MistralForCausalLM"], hidden_act="silu", rms_norm_eps=1e-5,
             rope_theta=1000000.0, sliding_window=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
             torch_dtype="bfloat16")
_MISTRAL_7B = dict(_BASE, vocab_size=32768, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128, intermediate_size=14336, max_position_embeddings=32768)
# Nemo: 128-dim heads although hidden / heads = 160
_NEMO = dict(_BASE, vocab_size=131072, hidden_size=5120, num_hidden_layers=40, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, intermediate_size=14336, max_position_embeddings=1024000)
_MIXTRAL = dict(_BASE, model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=32000, hidden_size=4096,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                max_position_embeddings=32768, num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02)

register_family("mistral", "mistral", "MistralForCausalLM", "mistral_v3",
                {"mistralai/Mistral-7B-Instruct-v0.3": _MISTRAL_7B}, _MS, ("transformers>=4.42",),
                tokenizer="mistral_v3")
register_family("mistral", "mistral", "MistralForCausalLM", "mistral_nemo",
                {"mistralai/Mistral-Nemo-Instruct-2407": _NEMO}, _MS, ("transformers>=4.43",),
                tokenizer="mistral_tekken")
register_family("mistral", "mixtral", "MixtralForCausalLM", "mistral_v1",
                {"mistralai/Mixtral-8x7B-Instruct-v0.1": _MIXTRAL}, _MS, ("transformers>=4.36",),
                tokenizer="mistral_v1")
register_family("mistral", "mistral3", "Mistral3ForConditionalGeneration", "mistral_small",
                ["mistralai/Mistral-Small-3.2-24B-Instruct-2506"], _MS, ("transformers>=4.50",),
                no_miniature="Mistral3ForConditionalGeneration (Mistral text model + Pixtral vision encoder) is not a "
                             "causal-LM class in transformers (AutoModelForCausalLM cannot build it), so neither a "
                             "miniature nor the real model can be trained by wb yet")
