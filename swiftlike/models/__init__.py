"""Load tokenizers and models (hub, local, miniature), attach adapters."""
from .loader import attach_lora, build_miniature, load_model, load_tokenizer
from .resolve import ModelRef, load_for_inference, resolve

__all__ = ["ModelRef", "attach_lora", "build_miniature", "load_for_inference", "load_model", "load_tokenizer",
           "resolve"]
