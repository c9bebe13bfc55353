"""Model registry. Families are declared as data, one module each."""
from . import deepseek, gemma, glm, internlm, llama, minicpm, mistral, phi, qwen2, qwen3, qwen_vl, yi  # noqa: F401
from .core import (MODELS, TOKENIZERS, ModelMeta, TokenizerSpec, find_model, models, register, register_family,
                   register_tokenizer, suggest)

__all__ = ["MODELS", "TOKENIZERS", "ModelMeta", "TokenizerSpec", "find_model", "models", "register", "register_family",
           "register_tokenizer", "suggest"]
