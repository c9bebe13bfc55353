"""Tokenizer and model loading: hub or local weights, miniatures, QLoRA quantization, LoRA adapters."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import accel
from ..errors import UserError
from ..hub import download, is_local
from ..registry import ModelMeta, find_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# A miniature keeps the architecture, vocabulary and template, and shrinks everything else.
MINIATURE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, initializer_range=0.2)
MINIATURE_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)


def model_meta(model: str) -> ModelMeta | None:
    """Registry entry for a hub id, or for a local directory whose args.json names one."""
    meta = find_model(model)
    if meta is None and is_local(model):
        args = Path(model) / "args.json"
        if args.is_file():
            meta = find_model(json.loads(args.read_text()).get("model", ""))
    return meta


def config_dir(model: str, hub: str) -> str:
    """A directory holding the model's config and tokenizer (no weights needed)."""
    if is_local(model):
        return str(Path(model).expanduser())
    return download(model, hub, config_only=True)


def load_tokenizer(model: str, hub: str = "huggingface", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    meta = find_model(model)
    if meta and meta.tokenizer and not is_local(model):
        path = ASSETS / "tokenizers" / meta.tokenizer  # bundled: no hub round-trip for registered families
    else:
        path = config_dir(model, hub)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_miniature(model: str, hub: str = "huggingface", seed: int = 42, dtype: torch.dtype = torch.float32):
    """A randomly initialised, 2-layer, narrow model of the same architecture (seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    meta = find_model(model)
    if meta is not None and meta.config:
        cfg_dict = dict(meta.config)
        config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    else:
        config = AutoConfig.from_pretrained(config_dir(model, hub))
    shrink = dict(MINIATURE, **(MINIATURE_MOE if hasattr(config, "num_experts") else {}))
    for key, value in shrink.items():
        if hasattr(config, key):
            setattr(config, key, value)
    if hasattr(config, "layer_types"):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def load_model(path: str, dtype: torch.dtype, *, quantize_4bit: bool = False, attn_implementation: str | None = None,
               trust_remote_code: bool = False, device: torch.device | None = None, reward_head: bool = False,
               pad_token_id: int | None = None):
    """Weights from a local directory (already downloaded), optionally quantized to 4-bit NF4. With
    `reward_head` the model gets a one-output sequence-classification head (new, or the checkpoint's own)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    device = device or accel.device()
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if attn_implementation:
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
    if reward_head:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model if quantize_4bit else model.to(device)


def quiet_libraries() -> None:
    """Silence start-up chatter that is not actionable for users (optional kernels, deprecations)."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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


def attach_lora(model, cfg, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    model = prepare_4bit(model, gradient_checkpointing)
    targets = cfg.target_modules
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear" if targets in (["all-linear"], "all-linear") else targets,
                      use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, task_type=task_type)
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(f"cannot attach LoRA: {e}") from None
