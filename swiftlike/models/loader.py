"""Tokenizer and model loading: hub or local weights, miniatures, QLoRA quantization, LoRA adapters."""
from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import accel
from ..errors import UserError, intact, one_line
from ..hub import download, is_local
from ..registry import ModelMeta, find_model
from . import attention
from ..registry.core import TOKENIZERS, TokenizerSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# A miniature keeps the architecture, vocabulary and template, and shrinks everything else.
MINIATURE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, initializer_range=0.2)
MINIATURE_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
MINIATURE_VISION = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, head_dim=16)
# bundled byte-level BPE vocabularies (vocab.json + merges.txt) and the tokenizer class that reads them
_BASE_TOKENIZERS = {"qwen3": "Qwen2Tokenizer", "gpt2": "GPT2Tokenizer"}
# what a directory holds when it has a tokenizer (fast, BPE vocabulary, SentencePiece or tiktoken)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "*.tiktoken")


def config_dir(model: str, hub: str, miniature: bool = False) -> str:
    """A directory holding the model's config and tokenizer (no weights needed)."""
    if is_local(model):
        return str(Path(model).expanduser())
    return download(hub_id(model, hub), hub, config_only=True, miniature=miniature)


def hub_id(model: str, hub: str) -> str:
    """The id to ask `hub` for: a registered model's ModelScope id where it differs from its Hugging Face one
    (`--hub modelscope --model google/gemma-2-2b-it` is LLM-Research/gemma-2-2b-it there)."""
    meta = find_model(model) if hub == "modelscope" else None
    return meta.modelscope_id if meta is not None and meta.modelscope_id else model


@contextmanager
def own_code_refused(model: str):
    """transformers' refusal to run a repository's own Python code (trust_remote_code off) -> one line."""
    try:
        yield
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise UserError(f"{model} needs its own Python code to load (auto_map in its config); add "
                        "--trust_remote_code if you trust it") from None


def load_tokenizer(model: str, hub: str = "huggingface", trust_remote_code: bool = False, miniature: bool = False):
    """The model's tokenizer. For a miniature of a registered id nothing is downloaded: the bundled tokenizer is
    the family's own, or a stand-in vocabulary with the family's special tokens and chat template (said once)."""
    from transformers import AutoTokenizer

    meta = find_model(model)
    if meta and miniature and not meta.tokenizer and not is_local(model):
        tok = miniature_tokenizer(meta)
        if accel.is_main_process():
            for line in miniature_notes(meta):
                print(f"[wb] miniature: {line}", flush=True)
    else:
        if meta and meta.tokenizer and not is_local(model):
            path = ASSETS / "tokenizers" / meta.tokenizer  # bundled: no hub round-trip for registered families
        else:
            path = config_dir(model, hub, miniature)
            if not any(any(Path(path).glob(pattern)) for pattern in TOKENIZER_FILES):
                raise UserError(f"{model}: no tokenizer there ({', '.join(TOKENIZER_FILES)}); copy the base model's "
                                "tokenizer files into it")
        overrides = meta.tokenizer_overrides if meta and meta.tokenizer and not is_local(model) else {}
        with own_code_refused(model):
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **overrides)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _no_miniature(meta: ModelMeta) -> UserError:
    return UserError(f"no miniature of {meta.model_id}: {meta.no_miniature or 'the registry holds no config for it'}")


def miniature_notes(meta: ModelMeta) -> list[str]:
    """What a registered id's miniature does not share with the real model (printed at start-up)."""
    notes = [meta.miniature_note] if meta.miniature_note else []
    spec = meta.miniature_tokenizer_spec
    if spec is not None and not spec.own:
        notes.append(f"{spec.label} template and special tokens over a stand-in vocabulary (GPT-2's byte-level BPE, "
                     f"not {spec.label}'s): ordinary text gets other token ids than in the real model")
    return notes


def miniature_tokenizer(meta: ModelMeta):
    """The tokenizer of a registered id's miniature, built offline from bundled files."""
    if meta.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ASSETS / "tokenizers" / meta.tokenizer)
    spec = meta.miniature_tokenizer_spec
    if meta.no_miniature or not meta.config or spec is None:
        raise _no_miniature(meta)
    return bundled_tokenizer(spec, meta.template)


@functools.lru_cache(maxsize=None)
def _base_vocabulary(base: str) -> tuple[dict, tuple]:
    folder = ASSETS / "tokenizers" / base
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = tuple(tuple(line.split(" ")) for line in lines if line and not line.startswith("#version"))
    return vocab, merges


def bundled_tokenizer(spec: TokenizerSpec, template: str | None = None):
    """A bundled BPE vocabulary plus the spec's added tokens (appended in order; a token the vocabulary already
    holds keeps its id), its bos/eos/pad/unk, and the chat template of `template` where one is bundled."""
    import transformers
    from tokenizers import AddedToken

    base_vocab, merges = _base_vocabulary(spec.base)
    vocab = dict(base_vocab)
    for token in spec.added:
        vocab.setdefault(token, len(vocab))
    cls = getattr(transformers, _BASE_TOKENIZERS[spec.base])
    tok = cls(vocab=vocab, merges=list(merges), unk_token=spec.unk, bos_token=spec.bos, eos_token=spec.eos,
              pad_token=spec.pad, add_bos_token=spec.add_bos, add_prefix_space=False, errors="replace",
              clean_up_tokenization_spaces=False, extra_special_tokens=list(spec.extra_special))
    tok.add_tokens([AddedToken(t, special=t not in spec.plain, normalized=False) for t in spec.added])
    jinja = ASSETS / "chat_templates" / f"{template}.jinja"
    if template and jinja.is_file():
        tok.chat_template = jinja.read_text(encoding="utf-8")
    return tok


@functools.lru_cache(maxsize=None)
def _tokenizer_ids(name: str) -> tuple[int, int | None, int | None, int | None]:
    """(length, bos id, eos id, pad id) of a bundled tokenizer spec; pad falls back to eos as in load_tokenizer."""
    tok = bundled_tokenizer(TOKENIZERS[name])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return len(tok), tok.bos_token_id, tok.eos_token_id, pad


def miniature_config(model: str, hub: str = "huggingface"):
    """The config of a miniature: the registry's config facts (the hub's config.json for an unregistered id) with
    the sizes shrunk and the structure kept (attention kind MHA/GQA/MQA, layer types, MoE and latent-attention
    layout, RoPE kind, vision tower); the vocabulary fitted to a stand-in tokenizer."""
    from transformers import AutoConfig

    meta = find_model(model)
    if meta is not None and (meta.no_miniature or not meta.config):
        raise _no_miniature(meta)
    if meta is not None:
        config = registered_config(meta)
    else:
        config = AutoConfig.from_pretrained(config_dir(model, hub, miniature=True))
    text = config.get_text_config()
    heads, kv_heads = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
    shrink = dict(MINIATURE, **(MINIATURE_MOE if hasattr(text, "num_experts") else {}))
    for key, value in shrink.items():
        if hasattr(text, key):
            setattr(text, key, value)
    if text is not config and hasattr(config, "initializer_range"):
        config.initializer_range = MINIATURE["initializer_range"]
    if kv_heads is not None and kv_heads in (1, heads):  # multi-query and multi-head attention stay so
        text.num_key_value_heads = 1 if kv_heads == 1 else text.num_attention_heads
    for key, value in (meta.miniature_shrink if meta is not None else {}).items():
        setattr(text, key, value)
    vision = getattr(config, "vision_config", None)
    for key, value in MINIATURE_VISION.items():
        if vision is not None and hasattr(vision, key):
            setattr(vision, key, value)
    if vision is not None and hasattr(vision, "depth"):  # Qwen-VL's vision tower
        _fit_qwen_vision(vision, text)
    if getattr(text, "layer_types", None):
        text.layer_types = _miniature_layer_types(text.layer_types, text.num_hidden_layers)
    _fit_rope_factors(text)
    spec = meta.miniature_tokenizer_spec if meta is not None else None
    if spec is not None and not spec.own:
        length, bos, eos, pad = _tokenizer_ids(spec.name)
        text.vocab_size = -(-length // 64) * 64
        for cfg in {id(text): text, id(config): config}.values():
            cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = bos, eos, pad
    return config


def registered_config(meta: ModelMeta):
    """A transformers config from the registry's facts, built from a deep copy: transformers normalises nested
    dicts (rope parameters, sub-configs) in place, which must never change the registry itself."""
    import copy

    from transformers import AutoConfig

    cfg_dict = copy.deepcopy(dict(meta.config))
    return AutoConfig.for_model(cfg_dict.pop("model_type"), **_with_rope_factors(cfg_dict))


def model_config(model: str, hub: str = "huggingface", trust_remote_code: bool = False, miniature: bool = False):
    """The model's config without its weights: a registered id's from the registry (offline), a local directory's
    or checkpoint's config.json, else the hub's config.json (one line when it cannot be fetched); with `miniature`,
    its miniature's."""
    from transformers import AutoConfig

    if miniature:
        return miniature_config(model, hub)
    meta = find_model(model)
    if meta is not None and meta.config and not is_local(model):
        return registered_config(meta)
    path = config_dir(model, hub)
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{model}: no config.json there (a model directory holds its config.json, weights and "
                        "tokenizer)")
    try:
        with own_code_refused(model):
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read the config of {model}: {str(e).strip().splitlines()[0][:200]}") from None


def build_miniature(model: str, hub: str = "huggingface", seed: int = 42, dtype: torch.dtype = torch.float32,
                    overrides: dict | None = None):
    """A randomly initialised, 2-layer, narrow model of the same architecture (seeded); `overrides`: config
    attributes a run changed (models/rope.py)."""
    from .rope import apply

    config = apply(miniature_config(model, hub), overrides or {})
    with torch.random.fork_rng(devices=[]):  # the caller's random state is the same whether or not one is built
        torch.manual_seed(seed)
        return auto_class(config).from_config(config, dtype=dtype)


def auto_class(config):
    """The transformers auto class that builds this config's generating model: causal LM, or image-text-to-text
    for the vision-language models that have no causal-LM mapping (Qwen2.5-VL, Qwen3-VL)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if type(config) in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM
    if type(config) in AutoModelForImageTextToText._model_mapping:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM  # its own error names the config


def is_vision_language(config) -> bool:
    """A model that reads images (Qwen-VL): its config has a vision tower and it is built image-text-to-text."""
    from transformers import AutoModelForImageTextToText

    return getattr(config, "vision_config", None) is not None and auto_class(config) is AutoModelForImageTextToText


def _fit_qwen_vision(vision, text) -> None:
    """A one-block Qwen-VL vision tower that fits the miniature's text model, with the constraints checked that a
    wrong value breaks silently or late: the merger's output is the text width, M-RoPE's sections add up to half the
    head size, the indexes of full-attention (Qwen2.5-VL) and deepstack (Qwen3-VL) blocks are within the depth."""
    vision.depth, vision.num_heads, vision.out_hidden_size = 1, 2, text.hidden_size
    if getattr(vision, "fullatt_block_indexes", None):
        vision.fullatt_block_indexes = [0]
    if getattr(vision, "deepstack_visual_indexes", None):
        vision.deepstack_visual_indexes = [0]
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if "mrope_section" in rope:
        half = (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads) // 2
        rope["mrope_section"] = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # t, h, w
        if sum(rope["mrope_section"]) != half or min(rope["mrope_section"]) < 1:
            raise ValueError(f"miniature M-RoPE sections {rope['mrope_section']} do not add up to {half}")
    if vision.out_hidden_size != text.hidden_size:
        raise ValueError("miniature vision tower's output width differs from the text model's")


def _miniature_layer_types(types: list[str], n: int) -> list[str]:
    """The first n layer types, the last of them replaced where needed so that every kind stays represented
    (Gemma-3's five sliding-window layers per global one become: sliding, global)."""
    out = list(types[:n])
    missing = [t for t in dict.fromkeys(types) if t not in out][-n:]
    if missing:
        out[n - len(missing):] = missing
    return out


def _rotary_half(get) -> int:
    """Half the rotary dimension (the length of LongRoPE's factor lists)."""
    head_dim = get("head_dim") or get("hidden_size") // get("num_attention_heads")
    rope = get("rope_parameters") or get("rope_scaling") or {}
    return int(head_dim * (rope.get("partial_rotary_factor") or get("partial_rotary_factor") or 1.0)) // 2


def _with_rope_factors(cfg: dict) -> dict:
    """LongRoPE needs per-dimension factors; the registry records the kind only (the real factors are fitted to the
    real head size and a miniature cannot use them), so unit factors of the right length are filled in."""
    rope = cfg.get("rope_scaling")
    if not rope or rope.get("rope_type") != "longrope" or "long_factor" in rope:
        return cfg
    half = _rotary_half(cfg.get)
    return dict(cfg, rope_scaling=dict(rope, long_factor=[1.0] * half, short_factor=[1.0] * half))


def _fit_rope_factors(config) -> None:
    """Per-dimension RoPE factors (LongRoPE) resized to the miniature's head size (unit factors)."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and isinstance(rope.get("long_factor"), list):
        half = _rotary_half(lambda key: getattr(config, key, None))
        rope["long_factor"], rope["short_factor"] = [1.0] * half, [1.0] * half


def load_model(path: str, dtype: torch.dtype, *, quantize_4bit: bool = False, attn_implementation: str | None = None,
               trust_remote_code: bool = False, device: torch.device | None = None, reward_head: bool = False,
               pad_token_id: int | None = None, announce_head: bool = True, overrides: dict | None = None):
    """Weights from a local directory (already downloaded), optionally quantized to 4-bit NF4. With
    `reward_head` the model gets a one-output sequence-classification head (new, or the checkpoint's own), said
    in one line unless `announce_head` is false (the caller loads the head from adapters and says so).
    `overrides`: config attributes a run changed (--rope_scaling: models/rope.py), set as the model is built."""
    from transformers import AutoModelForSequenceClassification

    device = device or accel.device()
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, **(overrides or {}))
    if attn_implementation:
        if attn_implementation == attention.VARLEN:
            attention.register()
        kwargs["attn_implementation"] = attn_implementation
    if quantize_4bit:
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("--qlora needs bitsandbytes: pip install 'swiftlike[qlora]'") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device}
    try:
        if reward_head:
            with own_code_refused(path), intact(path):
                model = _load_reward_model(AutoModelForSequenceClassification, path, kwargs, announce_head)
            if model.config.pad_token_id is None:
                model.config.pad_token_id = pad_token_id
        else:
            from transformers import AutoConfig

            with own_code_refused(path), intact(path):
                config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
                model = auto_class(config).from_pretrained(path, **kwargs)
    except ValueError as e:
        if attn_implementation and "attn_implementation" in str(e):  # (an unknown name, or one the model lacks)
            raise UserError(f"--attn_implementation {attn_implementation}: {str(e).split('. ')[0]}") from None
        raise
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met objects other than tensors
        raise UserError(f"{path}: its pickled weights (.bin) hold objects other than tensors, which are not loaded "
                        "(they could run code); use safetensors weights") from None
    except OSError as e:  # weights missing (a shard too) or unreadable
        raise UserError(f"{path}: cannot load the model's weights: {one_line(e)}") from None
    return model if quantize_4bit else model.to(device)


class _HeldLoadReport(logging.Filter):
    """Holds back transformers' load report (a table of missing and unexpected weights) while a reward model loads."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


def _load_reward_model(auto_cls, path: str, kwargs: dict, announce: bool):
    """A sequence-classification model without transformers' load report: a missing `score` head (new, randomly
    initialised, as on every base model) is expected and said in one line; anything else wrong is reported."""
    log = logging.getLogger("transformers.modeling_utils")
    hold = _HeldLoadReport()
    log.addFilter(hold)
    try:
        model, info = auto_cls.from_pretrained(path, num_labels=1, output_loading_info=True, **kwargs)
    finally:
        log.removeFilter(hold)
    missing = set(info.get("missing_keys") or ())
    new_head = {k for k in missing if k.split(".")[0] == "score"}
    if missing - new_head or info.get("mismatched_keys"):  # not the head: the user should see the whole report
        for record in hold.held:
            log.handle(record)
    if announce and accel.is_main_process():
        print(f"[wb] reward head: new (not in {path}; a randomly initialised score layer that training learns)"
              if new_head else f"[wb] reward head: loaded from {path}", file=sys.stderr)
    return model


def quiet_libraries() -> None:
    """Silence start-up chatter that is not actionable for users (optional kernels, deprecations)."""
    import logging
    import warnings

    for name in ("bitsandbytes", "torchao", "torch.utils._pytree", "DeepSpeed"):  # torchao: CUDA kernels it cannot
        logging.getLogger(name).setLevel(logging.ERROR)  # load, enum registrations torch deprecates; DeepSpeed: info
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # DeepSpeed and FSDP call the collectives torch renamed; nothing for a user to change
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if accel.device_type() == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it found no GPU
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def padding_id(tokenizer) -> int:
    """The id that fills padding: the pad token, else the eos token, else 0 (padding is masked either way)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def prepare_4bit(model, gradient_checkpointing: bool):
    """A 4-bit (QLoRA) base made ready for adapters (norms in fp32, input gradients); others unchanged."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_lora(model, cfg, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM",
                trainable_tokens: dict | None = None, init: str | None = None):
    """New LoRA adapters (and `trainable_tokens`, PEFT's trainable_token_indices: new tokens' rows that train),
    started as `init` asks (default: --init_lora_weights; models/lora_init.py)."""
    from peft import LoraConfig, get_peft_model

    from .lora_init import peft_value

    model = prepare_4bit(model, gradient_checkpointing)
    targets = cfg.target_modules
    all_linear = targets in (["all-linear"], "all-linear")
    dropout = cfg.lora_dropout
    if dropout and all_linear and _fused_experts(model):
        dropout = 0.0
        if accel.is_main_process():
            print(f"[wb] lora: dropout 0 instead of {cfg.lora_dropout}: all-linear includes the MoE experts, whose "
                  "fused weights LoRA adapts without dropout", flush=True)
    if all_linear and vision_parts(model):
        targets, all_linear = vision_language_targets(model, cfg), False
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=dropout,
                      target_modules="all-linear" if all_linear else targets,
                      use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, task_type=task_type,
                      trainable_token_indices=trainable_tokens,
                      init_lora_weights=peft_value(init or getattr(cfg, "init_lora_weights", "default")))
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        hint = "; leave the MoE experts out of --target_modules or pass --lora_dropout 0" \
            if "lora_dropout != 0" in str(e) else ""
        raise UserError(f"cannot attach LoRA: {e}{hint}") from None


def vision_part(name: str) -> str:
    """The part of a (vision-language) model a parameter or module belongs to: "vit" (the vision encoder),
    "aligner" (the merger that projects image features into the language model) or "llm"."""
    if ".visual." not in f".{name}":
        return "llm"
    return "aligner" if "merger" in name else "vit"


def vision_parts(model) -> dict[str, str]:
    """Parameter name -> vision_part of a vision-language model; empty for a text-only model."""
    names = [n for n, _ in model.named_parameters()]
    if not any(".visual." in f".{n}" for n in names):
        return {}
    return {n: vision_part(n) for n in names}


def _trains(part: str, cfg) -> bool:
    return not {"vit": cfg.freeze_vit, "aligner": cfg.freeze_aligner, "llm": cfg.freeze_llm}[part]


def vision_language_targets(model, cfg) -> list[str]:
    """all-linear on a vision-language model: the linear layers of the parts that train (the language model, and
    the vision encoder / merger only with --freeze_vit / --freeze_aligner false); never the output layer."""
    parts = vision_parts(model)
    out = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
           and not name.endswith("lm_head") and _trains(parts.get(f"{name}.weight", "llm"), cfg)]
    if not out:
        raise UserError("no linear layer left for LoRA: every part of the model is frozen (--freeze_vit, "
                        "--freeze_aligner, --freeze_llm)")
    return out


def freeze_vision_parts(model, cfg):
    """Full training of a vision-language model: the frozen parts (--freeze_vit, --freeze_aligner, --freeze_llm)
    get no gradient. A text-only model is returned as it is."""
    parts = vision_parts(model)
    for name, p in model.named_parameters():
        if name in parts:
            p.requires_grad_(_trains(parts[name], cfg))
    return model


def select_trainable(model, cfg):
    """Full training with --trainable_parameters (only what matches trains) and --freeze_parameters (what matches
    does not): regular expressions searched in the parameter names. A tied weight (the output layer sharing the
    embedding) goes by every name it has. A pattern that matches nothing, or a selection that leaves nothing to
    train, is refused (a typo would otherwise train everything or nothing)."""
    keep, drop = getattr(cfg, "trainable_parameters", []), getattr(cfg, "freeze_parameters", [])
    if not (keep or drop):
        return model
    if keep and vision_parts(model):  # (their learning rates, the dry run's parts and GRPO's checks read the flags)
        raise UserError("--trainable_parameters is not supported on a vision-language model: choose its parts with "
                        "--freeze_vit / --freeze_aligner / --freeze_llm and narrow them with --freeze_parameters")
    every = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    for flag, patterns in (("trainable_parameters", keep), ("freeze_parameters", drop)):
        for pattern in patterns:
            if not any(re.search(pattern, n) for n in every):
                raise UserError(f"--{flag} '{pattern}' matches no parameter of this model (its names look like "
                                f"{every[0]!r} ... {every[-1]!r})")
    chosen = trained_names(model, keep, drop)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    if not chosen:
        raise UserError("--trainable_parameters / --freeze_parameters leave no parameter to train")
    return model


def trained_names(model, keep: list, drop: list) -> set[str]:
    """The parameters (by their first name) that train with these patterns, from what trains now."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    chosen = set()
    for p in model.parameters():
        its = names[id(p)]
        trains = any(re.search(k, n) for k in keep for n in its) if keep else p.requires_grad
        if trains and not any(re.search(d, n) for d in drop for n in its):
            chosen.add(its[0])
    return chosen


def _fused_experts(model) -> bool:
    """MoE experts stored as 3-D weights (transformers 5: Qwen3-MoE, Mixtral, DeepSeek-V3): PEFT's all-linear adapts
    them as parameters, which supports no dropout."""
    return any(p.dim() == 3 for name, p in model.named_parameters() if ".experts." in name)
