"""Model registry: model id -> ModelMeta (model type, architecture, template, config for miniatures)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer that --miniature builds offline: a byte-level BPE vocabulary bundled in
    swiftlike/assets/tokenizers/<base> (vocab.json + merges.txt), then the family's added tokens in id order.

    `own`: the family's real vocabulary, added tokens and ids (Qwen2.5, QwQ, R1-Distill-Qwen share Qwen's BPE).
    Otherwise a stand-in: GPT-2's vocabulary with the family's special tokens appended, so the family's template
    encodes its control tokens as single tokens, but ordinary text gets other ids than the real model's.
    """

    name: str
    label: str                          # how the family is named in the start-up line ("Llama-3")
    base: str                           # "qwen3" (Qwen2 BPE, 151,643 entries) or "gpt2" (50,257 entries)
    own: bool
    added: tuple[str, ...]              # appended to the vocabulary in this order (existing entries keep their id)
    plain: tuple[str, ...] = ()         # added tokens that are not special (kept by skip_special_tokens)
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None              # None: the loader pads with eos
    unk: str | None = None
    add_bos: bool = False               # the real tokenizer prepends bos when asked for special tokens
    listed: tuple[str, ...] | None = None  # its additional special tokens; None: the special added ones

    @property
    def extra_special(self) -> tuple[str, ...]:
        if self.listed is not None:
            return self.listed
        roles = {self.bos, self.eos, self.pad, self.unk}
        return tuple(t for t in self.added if t not in self.plain and t not in roles)


TOKENIZERS: dict[str, TokenizerSpec] = {}


def register_tokenizer(spec: TokenizerSpec) -> TokenizerSpec:
    if spec.name in TOKENIZERS:
        raise ValueError(f"tokenizer registered twice: {spec.name}")
    TOKENIZERS[spec.name] = spec
    return spec


@dataclass(frozen=True)
class ModelMeta:
    model_id: str                       # Hugging Face id
    model_type: str                     # transformers config model_type
    architecture: str                   # config.architectures[0]
    template: str                       # template name in swiftlike.templates
    family: str
    tokenizer: str                      # bundled tokenizer asset (for --miniature offline), or ""
    tokenizer_overrides: dict = field(default_factory=dict)  # where this id's tokenizer differs from the bundled one
    config: dict = field(default_factory=dict)  # HF config fields; enough to build a miniature offline
    processor: dict = field(default_factory=dict)  # a vision-language model's preprocessor_config.json
    video_processor: dict = field(default_factory=dict)  # its video_preprocessor_config.json, where it has one
    modelscope_id: str = ""             # ModelScope id where it differs
    requires: tuple[str, ...] = ()      # pip requirement strings
    miniature_tokenizer: str = ""       # TokenizerSpec that --miniature builds where `tokenizer` is ""
    miniature_shrink: dict = field(default_factory=dict)  # family-specific miniature sizes (MLA ranks, ...)
    miniature_note: str = ""            # printed at start-up when the miniature's class differs from the real one
    no_miniature: str = ""              # why --miniature cannot build this id (then `config` is empty)

    @property
    def miniature_tokenizer_spec(self) -> TokenizerSpec | None:
        return TOKENIZERS.get(self.miniature_tokenizer) if self.miniature_tokenizer else None

    @property
    def miniature_kind(self) -> str:
        """How --miniature builds this id: "own tokenizer", "stand-in tokenizer" or "none"."""
        if self.no_miniature or not self.config:
            return "none"
        spec = self.miniature_tokenizer_spec
        return "stand-in tokenizer" if spec is not None and not spec.own else "own tokenizer"

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


def register_family(family: str, model_type: str, architecture: str, template: str, ids: list[str] | dict[str, dict],
                    modelscope_org: str | None = None, requires: tuple[str, ...] = (), *, tokenizer: str = "",
                    shrink: dict | None = None, note: str = "", no_miniature: str = "") -> None:
    """Register several ids that share type, architecture and template.

    `ids` is a list, or a dict id -> the HF config facts a miniature is built from (`config`). `tokenizer` names
    the TokenizerSpec of its miniatures, `shrink` family-specific miniature sizes, `note` a line printed when the
    miniature is built with an in-library class other than the real one, `no_miniature` why none can be built.
    `modelscope_org` names the ModelScope organisation where it differs from the Hugging Face one.
    """
    configs = ids if isinstance(ids, dict) else {}
    for model_id in ids:
        ms = f"{modelscope_org}/{model_id.split('/', 1)[1]}" if modelscope_org else ""
        register(ModelMeta(model_id=model_id, model_type=model_type, architecture=architecture, template=template,
                           family=family, tokenizer="", config=configs.get(model_id, {}), modelscope_id=ms,
                           requires=requires, miniature_tokenizer=tokenizer, miniature_shrink=dict(shrink or {}),
                           miniature_note=note, no_miniature=no_miniature))


def find_model(model_id: str) -> ModelMeta | None:
    """Exact (case-insensitive) id match; local paths are resolved by the hub layer."""
    return MODELS.get(model_id.strip("/").lower())


def models(family: str | None = None) -> list[ModelMeta]:
    seen, out = set(), []
    for meta in MODELS.values():
        if meta.model_id not in seen and (family is None or meta.family == family.lower()):
            seen.add(meta.model_id)
            out.append(meta)
    return out


def suggest(model_id: str, n: int = 3) -> list[str]:
    import difflib

    ids = sorted({m.model_id for m in MODELS.values()})
    return difflib.get_close_matches(model_id, ids, n=n, cutoff=0.5)
