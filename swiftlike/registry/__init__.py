"""Model registry. Families are declared as data, one module each."""
from . import deepseek, gemma, glm, internlm, llama, minicpm, mistral, phi, qwen2, qwen3, yi  # noqa: F401  (register)
from .core import MODELS, ModelMeta, find_model, models, register, register_family, suggest

__all__ = ["MODELS", "ModelMeta", "find_model", "models", "register", "register_family", "suggest"]
