"""Load tokenizers and models (hub, local, miniature), attach adapters."""
from .loader import attach_lora, build_miniature, load_model, load_tokenizer

__all__ = ["attach_lora", "build_miniature", "load_model", "load_tokenizer"]
