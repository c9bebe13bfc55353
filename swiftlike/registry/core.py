"""Model registry: model id -> ModelMeta (model type, architecture, template, config for miniatures)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelMeta:
    model_id: str                       # Hugging Face id
    model_type: str                     # transformers config model_type
    architecture: str                   # config.architectures[0]
    template: str                       # template name in swiftlike.templates
    family: str
    tokenizer: str                      # bundled tokenizer asset (for --miniature offline), or ""
    config: dict = field(default_factory=dict)  # HF config fields; enough to build a miniature offline
    modelscope_id: str = ""             # ModelScope id where it differs
    requires: tuple[str, ...] = ()      # pip requirement strings

    @property
    def all_ids(self) -> tuple[str, ...]:
        same = self.modelscope_id.lower() in ("", self.model_id.lower())
        return (self.model_id,) if same else (self.model_id, self.modelscope_id)


MODELS: dict[str, ModelMeta] = {}


def register(meta: ModelMeta) -> None:
    for mid in meta.all_ids:
        if mid.lower() in MODELS:
            raise ValueError(f"model id registered twice: {mid}")
        MODELS[mid.lower()] = meta


def register_family(family: str, model_type: str, architecture: str, template: str, ids: list[str],
                    modelscope_org: str | None = None, requires: tuple[str, ...] = ()) -> None:
    """Register several ids that share type, architecture and template (no bundled config or tokenizer).

    `modelscope_org` names the ModelScope organisation where it differs from the Hugging Face one.
    """
    for model_id in ids:
        ms = f"{modelscope_org}/{model_id.split('/', 1)[1]}" if modelscope_org else ""
        register(ModelMeta(model_id=model_id, model_type=model_type, architecture=architecture, template=template,
                           family=family, tokenizer="", modelscope_id=ms, requires=requires))


def find_model(model_id: str) -> ModelMeta | None:
    """Exact (case-insensitive) id match; local paths are resolved by the hub layer."""
    return MODELS.get(model_id.strip("/").lower())


def models(family: str | None = None) -> list[ModelMeta]:
    seen, out = set(), []
    for meta in MODELS.values():
        if meta.model_id not in seen and (family is None or meta.family == family):
            seen.add(meta.model_id)
            out.append(meta)
    return out


def suggest(model_id: str, n: int = 3) -> list[str]:
    import difflib

    ids = sorted({m.model_id for m in MODELS.values()})
    return difflib.get_close_matches(model_id, ids, n=n, cutoff=0.5)
