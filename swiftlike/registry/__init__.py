"""Model registry. Families are declared as data, one module each."""
from . import qwen3  # noqa: F401  (registers the family)
from .core import MODELS, ModelMeta, find_model, models, register, suggest

__all__ = ["MODELS", "ModelMeta", "find_model", "models", "register", "suggest"]
