"""Gemma-2 and Gemma-3 instruction-tuned models (text use)."""
from .core import register_family

_MS = "LLM-Research"
register_family("gemma", "gemma2", "Gemma2ForCausalLM", "gemma2",
                ["google/gemma-2-2b-it", "google/gemma-2-9b-it", "google/gemma-2-27b-it"], _MS, ("transformers>=4.42",))
register_family("gemma", "gemma3_text", "Gemma3ForCausalLM", "gemma3", ["google/gemma-3-1b-it"], _MS,
                ("transformers>=4.50",))
register_family("gemma", "gemma3", "Gemma3ForConditionalGeneration", "gemma3",
                ["google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"], _MS, ("transformers>=4.50",))
