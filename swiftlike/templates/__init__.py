"""Templates: a family's chat format as data + a renderer; `get_template` binds it to a tokenizer."""
from __future__ import annotations

from ..errors import UserError
from . import deepseek, gemma, glm, internlm, llama, minicpm, mistral, phi, qwen2, qwen3, qwen_vl, yi
from .base import IGNORE_INDEX, Template, TemplateSpec
from .errors import TemplateError
from .jinja import jinja_spec

_FAMILIES = (qwen3, qwen2, qwen_vl, llama, mistral, gemma, phi, deepseek, glm, internlm, yi, minicpm)
TEMPLATES: dict[str, TemplateSpec] = {s.name: s for mod in _FAMILIES for s in mod.SPECS}


def get_template(name_or_model_id: str, tokenizer, loss_scope: str = "assistant") -> Template:
    """A template by name (`qwen3`) or by any registered model id (`Qwen/Qwen3-8B`)."""
    spec = TEMPLATES.get(name_or_model_id)
    if spec is None:
        from ..registry import find_model

        meta = find_model(name_or_model_id)
        if meta is not None:
            spec = TEMPLATES[meta.template]
        elif getattr(tokenizer, "chat_template", None):
            spec = jinja_spec(tokenizer, name_or_model_id)
        else:
            raise UserError(f"unknown template or model {name_or_model_id!r} and its tokenizer has no chat "
                            f"template; templates: {', '.join(sorted(TEMPLATES))}")
    return Template(spec, tokenizer, loss_scope)


def check_template_name(name: str) -> None:
    """A --template the user named must be a registered template (or a registered model's id): a typo would
    otherwise fall back to the tokenizer's own template without a word."""
    from ..registry import find_model

    if name in TEMPLATES or find_model(name) is not None:
        return
    from ..config import closest_name

    close = closest_name(name, list(TEMPLATES))
    hint = f"; did you mean {close!r}?" if close else f"; templates: {', '.join(sorted(TEMPLATES))}"
    raise UserError(f"--template {name!r} is not a registered template{hint} (without --template a model that is "
                    "not registered uses its tokenizer's own chat template)")


__all__ = ["IGNORE_INDEX", "TEMPLATES", "Template", "TemplateError", "TemplateSpec", "check_template_name",
           "get_template"]
