"""Qwen3 family: dense, MoE and the 2507 Instruct/Thinking revisions (configs from the model cards' config.json)."""
from .core import ModelMeta, register

_BASE = dict(vocab_size=151936, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
             max_position_embeddings=40960, head_dim=128, attention_bias=False, bos_token_id=151643,
             eos_token_id=151645, torch_dtype="bfloat16")

# name: (hidden, layers, heads, kv_heads, intermediate, tie_embeddings)
_DENSE = {
    "Qwen3-0.6B": (1024, 28, 16, 8, 3072, True),
    "Qwen3-1.7B": (2048, 28, 16, 8, 6144, True),
    "Qwen3-4B": (2560, 36, 32, 8, 9728, True),
    "Qwen3-8B": (4096, 36, 32, 8, 12288, False),
    "Qwen3-14B": (5120, 40, 40, 8, 17408, False),
    "Qwen3-32B": (5120, 64, 64, 8, 25600, False),
}
# name: (hidden, layers, heads, kv_heads, moe_intermediate, experts, experts_per_token)
_MOE = {
    "Qwen3-30B-A3B": (2048, 48, 32, 4, 768, 128, 8),
    "Qwen3-235B-A22B": (4096, 94, 64, 4, 1536, 128, 8),
}
_TEMPLATE_2507 = {"Instruct": "qwen3_instruct_2507", "Thinking": "qwen3_thinking_2507"}


def _dense(h, layers, heads, kv, inter, tie, **extra):
    return dict(_BASE, model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=h,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=inter, tie_word_embeddings=tie, **extra)


def _moe(h, layers, heads, kv, moe_inter, experts, topk, **extra):
    return dict(_BASE, model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], hidden_size=h,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=moe_inter * 8, moe_intermediate_size=moe_inter, num_experts=experts,
                num_experts_per_tok=topk, decoder_sparse_step=1, norm_topk_prob=True,
                tie_word_embeddings=False, **extra)


# the -Base (pretrained) checkpoints end a text with <|endoftext|> (the config's eos and the tokenizer's) and were
# trained to 32k positions
_PRETRAINED = dict(eos_token_id=151643, max_position_embeddings=32768)


def _add(model_id: str, cfg: dict, template: str, tokenizer_overrides: dict | None = None) -> None:
    register(ModelMeta(model_id=model_id, model_type=cfg["model_type"], architecture=cfg["architectures"][0],
                       template=template, family="qwen3", tokenizer="qwen3", config=cfg,
                       tokenizer_overrides=tokenizer_overrides or {}, requires=("transformers>=4.51",)))


for _name, _dims in _DENSE.items():
    _add(f"Qwen/{_name}", _dense(*_dims), "qwen3")
    _add(f"Qwen/{_name}-Base", _dense(*_dims, **_PRETRAINED), "qwen3", {"eos_token": "<|endoftext|>"})
for _name, _dims in _MOE.items():
    _add(f"Qwen/{_name}", _moe(*_dims), "qwen3")
    _add(f"Qwen/{_name}-Base", _moe(*_dims, **_PRETRAINED), "qwen3", {"eos_token": "<|endoftext|>"})
for _kind, _tpl in _TEMPLATE_2507.items():
    _long = {"max_position_embeddings": 262144, "rope_theta": 5000000.0}
    _add(f"Qwen/Qwen3-4B-{_kind}-2507", _dense(*_DENSE["Qwen3-4B"], **_long), _tpl)
    _add(f"Qwen/Qwen3-30B-A3B-{_kind}-2507", _moe(*_MOE["Qwen3-30B-A3B"], **{**_long, "rope_theta": 10000000.0}), _tpl)
    _add(f"Qwen/Qwen3-235B-A22B-{_kind}-2507", _moe(*_MOE["Qwen3-235B-A22B"], **{**_long, "rope_theta": 5000000.0}), _tpl)
