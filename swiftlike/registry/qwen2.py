"""Qwen2.5 (Instruct, Coder) and QwQ."""
from .core import register_family

_SIZES = ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
_REQ = ("transformers>=4.37",)

register_family("qwen2_5", "qwen2", "Qwen2ForCausalLM", "qwen2_5",
                [f"Qwen/Qwen2.5-{s}-Instruct" for s in _SIZES], requires=_REQ)
register_family("qwen2_5", "qwen2", "Qwen2ForCausalLM", "qwen2_5",
                [f"Qwen/Qwen2.5-Coder-{s}-Instruct" for s in _SIZES[:-1]], requires=_REQ)
register_family("qwq", "qwen2", "Qwen2ForCausalLM", "qwq", ["Qwen/QwQ-32B"], requires=_REQ)
