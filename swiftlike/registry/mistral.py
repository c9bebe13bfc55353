"""Mistral-7B-Instruct-v0.3, Mistral-Nemo-Instruct-2407 and Mixtral-8x7B-Instruct-v0.1."""
from .core import register_family

_MS = "AI-ModelScope"
register_family("mistral", "mistral", "MistralForCausalLM", "mistral_v3", ["mistralai/Mistral-7B-Instruct-v0.3"], _MS,
                ("transformers>=4.42",))
register_family("mistral", "mistral", "MistralForCausalLM", "mistral_nemo", ["mistralai/Mistral-Nemo-Instruct-2407"],
                _MS, ("transformers>=4.43",))
register_family("mistral", "mixtral", "MixtralForCausalLM", "mistral_v1", ["mistralai/Mixtral-8x7B-Instruct-v0.1"],
                _MS, ("transformers>=4.36",))
register_family("mistral", "mistral3", "Mistral3ForConditionalGeneration", "mistral_small",
                ["mistralai/Mistral-Small-3.2-24B-Instruct-2506"], _MS, ("transformers>=4.50",))
