"""--rope_scaling: rotary position embeddings stretched past the positions a model was trained on, for training on
(and then serving) sequences longer than its context: linear position interpolation or YaRN.

    parse(value)                        -> the option checked: None, "linear", "yarn" or a dict of RoPE parameters
    overrides(spec, config, length)     -> {"rope_parameters": ..., "max_position_embeddings": ...} for this model
    describe(overrides)                 -> "yarn x4 (40,960 -> 163,840 positions)", or "the model's own RoPE"
    apply(config, overrides)            -> the config changed in place (configs built without from_pretrained)
    past_positions(config, length)      -> a start-up note when sequences run past the model's positions unscaled

The overrides are config attributes: transformers' `from_pretrained(path, **overrides)` builds the rotary
embedding from them. A run saves them in args.json (`config_overrides`), and every later load of its model —
resume, `--adapters`, infer, deploy, eval, export — applies them again (models/resolve.py: `ModelRef.overrides`); a
full checkpoint's and an export's config.json carry them as well.
"""
from __future__ import annotations

import json
import math

from ..errors import UserError

KINDS = ("linear", "yarn")
# the keys a --rope_scaling object may give, per kind (transformers' names)
_KEYS = {"linear": {"rope_type", "factor"},
         "yarn": {"rope_type", "factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
                  "beta_slow"}}
FLAG = "--rope_scaling"


def parse(value) -> str | dict | None:
    """The option as given: a kind (factor from the sequence length) or a JSON object of RoPE parameters."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        if value not in KINDS:
            raise UserError(f"{FLAG}: {value!r} is not one of {', '.join(KINDS)} (or a JSON object such as "
                            "'{\"rope_type\": \"yarn\", \"factor\": 4}')")
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{FLAG}: not valid JSON: {value!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{FLAG}: expected linear, yarn or a JSON object, got {value!r}")
    spec = dict(value)
    if "type" in spec and "rope_type" not in spec:  # (the older key, as configs before transformers 4.45 wrote it)
        spec["rope_type"] = spec.pop("type")
    kind = spec.get("rope_type")
    if kind not in KINDS:
        raise UserError(f"{FLAG}: rope_type {kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise UserError(f"{FLAG}: {kind} takes {', '.join(sorted(_KEYS[kind]))}, not {', '.join(unknown)}")
    for key, low, what in (("factor", 1, "above 1 (how many times the positions stretch)"),
                           ("attention_factor", 0, "above 0"), ("beta_fast", 0, "above 0"), ("beta_slow", 0, "above 0"),
                           ("original_max_position_embeddings", 0, "a whole number of positions")):
        value = spec.get(key)
        whole = key != "original_max_position_embeddings" or isinstance(value, int)
        if value is not None and (not _number(value) or value <= low or not whole):
            raise UserError(f"{FLAG}: {key} must be a number {what}, got {value!r}")
    if spec.get("beta_fast", 32) <= spec.get("beta_slow", 1):
        raise UserError(f"{FLAG}: beta_fast ({spec.get('beta_fast', 32)}) must be above beta_slow "
                        f"({spec.get('beta_slow', 1)})")
    return spec


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def overrides(spec, config, length: int, trust_remote_code: bool = False) -> dict:
    """The config attributes that stretch this model's RoPE as `spec` asks, for sequences of `length` tokens:
    the factor (when not given) is ceil(length / the model's positions); the positions become that many times
    the original. Refused for vision-language models (their multimodal RoPE), for models whose RoPE is scaled
    already, for models that run their own code (which reads its own settings), and where nothing needs
    stretching."""
    spec = parse(spec)
    if spec is None:
        return {}
    if trust_remote_code:
        raise UserError(f"{FLAG} sets transformers' RoPE parameters, which a model running its own code "
                        "(--trust_remote_code) may not read; it is not combined with --trust_remote_code")
    if getattr(config, "vision_config", None) is not None:
        raise UserError(f"{FLAG}: vision-language models position their tokens with a multimodal RoPE, which "
                        "is not stretched here")
    text = config.get_text_config()
    rope = dict(getattr(text, "rope_parameters", None) or {})
    if not rope or any(isinstance(v, dict) for v in rope.values()):  # (none, or one per layer type: Gemma-3)
        raise UserError(f"{FLAG}: {config.model_type} does not describe one rotary embedding in its config "
                        "(rope_parameters); it is not stretched here")
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"{FLAG}: {config.model_type}'s RoPE is scaled already ({rope['rope_type']}, for "
                        f"{text.max_position_embeddings:,} positions); train within them or use a model without "
                        "RoPE scaling")
    spec = {"rope_type": spec} if isinstance(spec, str) else spec
    original = spec.get("original_max_position_embeddings", text.max_position_embeddings)
    factor = spec.get("factor")
    if factor is None:
        if length <= original:
            raise UserError(f"{FLAG} {spec['rope_type']}: sequences of {length:,} tokens fit the model's "
                            f"{original:,} positions; nothing to stretch (give a factor to stretch anyway: "
                            f"'{{\"rope_type\": \"{spec['rope_type']}\", \"factor\": 2}}')")
        factor = float(math.ceil(length / original))
    stretched = {**rope, **spec, "factor": float(factor)}
    if stretched["rope_type"] == "yarn":
        stretched["original_max_position_embeddings"] = original
    changed = {"rope_parameters": stretched, "max_position_embeddings": math.ceil(original * factor)}
    if hasattr(text, "original_max_position_embeddings"):  # (Phi-3's configs: transformers reads it from there)
        changed["original_max_position_embeddings"] = original
    return changed


def describe(overrides: dict) -> str:
    if not overrides:
        return "the model's own RoPE"
    rope = overrides["rope_parameters"]
    original = rope.get("original_max_position_embeddings") or math.floor(overrides["max_position_embeddings"]
                                                                          / rope["factor"])
    return (f"{rope['rope_type']} x{rope['factor']:g} ({original:,} -> {overrides['max_position_embeddings']:,} "
            "positions)")


def apply(config, overrides: dict):
    """`config` (a model's, or its text config's owner) with the overrides set on its text config."""
    text = config.get_text_config()
    for key, value in overrides.items():
        setattr(text, key, dict(value) if isinstance(value, dict) else value)
    return config


def past_positions(config, length: int) -> str | None:
    """A note when sequences of `length` tokens run past the model's positions (stretched or not)."""
    text = config.get_text_config()
    positions = getattr(text, "max_position_embeddings", None)
    if not positions or length <= positions:
        return None
    rope = getattr(text, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "default":
        return (f"sequences up to {length:,} tokens run past the model's {positions:,} trained positions; add "
                f"{FLAG} yarn (or linear) to stretch its RoPE over them")
    return (f"sequences up to {length:,} tokens run past the model's {positions:,} positions "
            f"({rope.get('rope_type')} x{rope.get('factor', 1):g}); positions beyond are extrapolated")
