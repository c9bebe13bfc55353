"""Phi-3.5-mini-instruct and Phi-4."""
from .core import register_family

_MS = "LLM-Research"
register_family("phi", "phi3", "Phi3ForCausalLM", "phi3_5", ["microsoft/Phi-3.5-mini-instruct"], _MS,
                ("transformers>=4.43",))
register_family("phi", "phi3", "Phi3ForCausalLM", "phi4", ["microsoft/phi-4"], _MS, ("transformers>=4.47",))
