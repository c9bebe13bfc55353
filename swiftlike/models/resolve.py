"""What a `--model` / `--adapters` / `--miniature` / `--template` combination points to: one answer for every
command (training, preview, infer, deploy, rollout, reward models).

    resolve(model, adapters, miniature, hub, template) -> ModelRef      (reads args.json; downloads nothing)
    template_name(ref, tokenizer)                       -> the template to render with
    load_reference_tokenizer(ref)                       -> the tokenizer the run was trained with
    base_weights(ref)                                   -> a local directory of the base weights (downloads)
    stored_dtype(directory)                             -> the dtype its config.json says the weights are in
    load_for_inference(...)                             -> (model, tokenizer, template), rebuilt as trained

A model reference is a hub id, a local model directory, a LoRA checkpoint (`--adapters`, its args.json names the
base), a full-parameter checkpoint or export (a directory with weights and args.json), or a miniature.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import accel
from ..errors import UserError, intact
from ..hub import download, is_local
from ..registry import ModelMeta, find_model


@dataclass(frozen=True)
class ModelRef:
    model: str                   # the hub id or directory named; for a LoRA checkpoint the model it was trained on
    base: str                    # the base weights: a local directory, or a hub id still to download
    adapters: str | None = None  # a LoRA checkpoint / PEFT adapter directory on top of `base`
    template: str | None = None  # --template, else the checkpoint's, else the registry's; None: decided by the tokenizer
    task: str = "sft"            # the command that trained it (a reward model: "rm")
    args: dict = field(default_factory=dict)  # the checkpoint's args.json ({} for a plain model)
    miniature: bool = False
    hub: str = "huggingface"

    @property
    def meta(self) -> ModelMeta | None:
        return find_model(self.model)

    @property
    def added_ids(self) -> list[int]:
        """The ids of the tokens its run added (--new_special_tokens; args.json's `added_tokens`)."""
        return sorted((self.args.get("added_tokens") or {}).values())

    @property
    def overrides(self) -> dict:
        """The config attributes its run changed on the base (--rope_scaling: models/rope.py), which every load of
        the base for it applies; args.json's `config_overrides`."""
        return dict(self.args.get("config_overrides") or {})

    @property
    def checkpoint(self) -> str | None:
        """The directory written by swiftlike (adapters or full weights), whose tokenizer the run used."""
        if self.adapters:
            return self.adapters
        return self.base if self.args else None


def read_args(directory: str) -> dict:
    path = Path(directory) / "args.json"
    if not path.is_file():
        raise UserError(f"{directory}: no args.json; is this a checkpoint written by swiftlike (`wb sft`, `wb dpo`, "
                        "...)?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def resolve(model: str = "", adapters: str | None = None, miniature: bool = False, hub: str = "huggingface",
            template: str | None = None) -> ModelRef:
    if adapters:
        if not Path(adapters).is_dir():
            raise UserError(f"--adapters {adapters}: no such directory")
        if not (Path(adapters) / "adapter_config.json").is_file():
            full = (Path(adapters) / "config.json").is_file()
            raise UserError(f"--adapters {adapters}: no adapter_config.json there; " + (
                "a full-parameter checkpoint is given with --model" if full else "a LoRA checkpoint is expected"))
        args = read_args(adapters)
        base = model or args.get("base_model_dir") or args["model"]
        return ModelRef(model=args["model"], base=base, adapters=adapters, task=args.get("task", "sft"), args=args,
                        template=template or args.get("template") or _registry_template(args["model"]),
                        miniature=False, hub=args.get("hub", hub))
    if not model:
        raise UserError("--model is required (a hub id such as Qwen/Qwen3-0.6B, a local directory or a checkpoint), "
                        "or --adapters with a LoRA checkpoint")
    local = is_local(model)
    if local and (Path(model) / "adapter_config.json").is_file() and not (Path(model) / "config.json").is_file():
        raise UserError(f"--model {model} is a LoRA checkpoint (adapters only): give it as --adapters {model}")
    if local and (Path(model) / "args.json").is_file():  # a full-parameter checkpoint or an export
        args = read_args(model)
        return ModelRef(model=args.get("model", model), base=str(Path(model).expanduser()), task=args.get("task", "sft"),
                        args=args, template=template or args.get("template") or _registry_template(args.get("model")),
                        hub=args.get("hub", hub))
    return ModelRef(model=model, base=str(Path(model).expanduser()) if local else model,
                    template=template or _registry_template(model), miniature=miniature, hub=hub)


def trained_from(checkpoint: str, template: str | None = None) -> ModelRef:
    """The model a checkpoint (LoRA or full) was trained from, with the template the run trained with: what
    `--with_base` and eval-after-train compare a checkpoint against."""
    args = read_args(checkpoint)
    saved = args.get("base_model_dir")
    base = saved if saved and Path(saved).is_dir() else args.get("model")
    if not base:
        raise UserError(f"{checkpoint}/args.json does not name the model it was trained from")
    return ModelRef(model=args.get("model", base), base=base, task="sft", miniature=False,
                    template=template or args.get("template") or _registry_template(args.get("model")),
                    hub=args.get("hub", "huggingface"))


def _registry_template(model_id: str | None) -> str | None:
    meta = find_model(model_id or "")
    return meta.template if meta is not None else None


def template_name(ref: ModelRef, tokenizer=None) -> str:
    """The known template; else the model's own chat template (the tokenizer's); else, for a local directory whose
    architecture maps to exactly one registered template, that template."""
    if ref.template:
        return ref.template
    if tokenizer is None or getattr(tokenizer, "chat_template", None):
        return ref.model
    candidates = _templates_for_architecture(ref.base)
    if len(candidates) == 1:
        return candidates[0]
    hint = f"models of its architecture use: {', '.join(candidates)}" if candidates else "see `wb models`"
    raise UserError(f"{ref.model!r} is not in the registry and its tokenizer has no chat template; choose one with "
                    f"--template ({hint})")


def _templates_for_architecture(directory: str) -> list[str]:
    from ..registry import models

    config = Path(directory) / "config.json"
    if not config.is_file():
        return []
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return sorted({m.template for m in models() if m.architecture in archs})


def load_reference_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    """A checkpoint's own tokenizer (saved with it), else the model's (bundled, hub or local)."""
    from .loader import load_tokenizer

    if ref.checkpoint:
        return load_tokenizer(ref.checkpoint)
    return load_tokenizer(ref.model, ref.hub, trust_remote_code, miniature=ref.miniature)


def base_weights(ref: ModelRef, trust_remote_code: bool = False) -> str:
    """A local directory holding the base weights (downloaded, and cached by the hub library, when needed)."""
    if is_local(ref.base):
        return str(Path(ref.base).expanduser())
    from .loader import hub_id

    return download(hub_id(ref.base, ref.hub), ref.hub, with_code=trust_remote_code)


def _quantized(directory: str) -> bool:
    try:
        return "quantization_config" in json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def stored_dtype(directory: str) -> torch.dtype:
    """The floating dtype a model directory's config.json says its weights are stored in (`dtype`, or the older
    `torch_dtype`; a vision-language model's may be its text config's); float32, what transformers loads without
    one, when it says none."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the model's config ({e})") from None
    for section in (config, config.get("text_config") or {}):
        name = section.get("dtype") or section.get("torch_dtype")
        dtype = getattr(torch, name, None) if isinstance(name, str) else None
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return dtype
    return torch.float32


def added_token_ids(ref: ModelRef) -> list[int]:
    """The ids of the tokens a LoRA run added (--new_special_tokens), whose rows are rebuilt before its adapters
    load."""
    return ref.added_ids if ref.adapters else []


def _saved(checkpoint: str, key: str) -> dict:
    """A mapping a swiftlike checkpoint's args.json records ({} for other checkpoints and older runs)."""
    return dict(read_args(checkpoint).get(key) or {}) if (Path(checkpoint) / "args.json").is_file() else {}


def added_tokens(checkpoint: str) -> dict[str, int]:
    """{token: id} a swiftlike checkpoint's run added to the tokenizer."""
    return _saved(checkpoint, "added_tokens")


def config_overrides(checkpoint: str) -> dict:
    """The config attributes a swiftlike checkpoint's run changed on its base (--rope_scaling)."""
    return _saved(checkpoint, "config_overrides")


def refuse_added_tokens(name: str, path: str, why: str) -> None:
    """Adapters whose run added tokens need their own tokenizer and rows, which `why` cannot give them."""
    tokens = added_tokens(path)
    if tokens:
        from .tokens import listed

        raise UserError(f"adapter {name!r} ({path}) adds tokens to the tokenizer ({listed(tokens)}), which {why}: "
                        f"merge it (`wb export --adapters {path} --merge`) and serve the export as --model")


def load_for_inference(model: str = "", adapters: str | None = None, miniature: bool = False,
                       torch_dtype: str = "auto", hub: str = "huggingface", template: str | None = None,
                       trust_remote_code: bool = False, attn_implementation: str | None = None,
                       overrides: dict | None = None):
    """(model, tokenizer, template), rebuilt from a checkpoint's args.json where there is one. `overrides`: config
    attributes to build a plain base with (the adapters `wb deploy` serves on it were trained so)."""
    from ..templates import get_template
    from .loader import build_miniature, load_model, quiet_libraries
    from .tokens import embedding_rows, rebuild_rows, refuse_rowless_tokens

    quiet_libraries()
    dtype = accel.resolve_dtype(torch_dtype)
    ref = resolve(model, adapters, miniature, hub, template)
    tokenizer = load_reference_tokenizer(ref, trust_remote_code)
    reward, weights, overrides = ref.task == "rm", None, ref.overrides or overrides or {}
    if ref.miniature:
        net = build_miniature(ref.model, ref.hub, dtype=dtype, overrides=overrides).to(accel.device())
    else:
        weights = base_weights(ref, trust_remote_code)
        if torch_dtype == "auto" and _quantized(weights):  # its kernels compute in the dtype it was quantized in
            dtype = stored_dtype(weights)
        net = load_model(weights, dtype, attn_implementation=attn_implementation,
                         trust_remote_code=trust_remote_code, reward_head=reward, pad_token_id=tokenizer.pad_token_id,
                         announce_head=not ref.adapters, overrides=overrides)
    rebuild_rows(net, added_token_ids(ref))
    refuse_rowless_tokens(tokenizer, embedding_rows(net), ref.adapters or ref.model,
                          "train them with --new_special_tokens, or use the tokenizer the model came with")
    if ref.adapters:
        from peft import PeftModel

        with intact(ref.adapters):
            net = PeftModel.from_pretrained(net, ref.adapters)
        if reward and accel.is_main_process():  # the base has no head; the adapters hold it (modules_to_save)
            print(f"[wb] reward head: loaded from {ref.adapters}", file=sys.stderr)
    net.eval()
    net.swiftlike_task = ref.task
    template = get_template(template_name(ref, tokenizer), tokenizer)
    if template.vision is not None:
        template.image_processing = image_processing(ref, weights)
    return net, tokenizer, template


def image_processing(ref: ModelRef, weights: str | None):
    """A vision-language model's image processor as trained: the checkpoint's preprocessor_config.json (its
    --max_pixels / --min_pixels), else the base weights', else the registry's (a miniature)."""
    from ..data.images import PREPROCESSOR_CONFIG, ImageProcessing

    for directory in (ref.checkpoint, weights):
        if directory and (Path(directory) / PREPROCESSOR_CONFIG).is_file():
            return ImageProcessing.from_dir(directory)
    if ref.meta is not None and ref.meta.processor:
        return ImageProcessing(dict(ref.meta.processor), video_config=dict(ref.meta.video_processor) or None)
    raise UserError(f"{ref.checkpoint or weights or ref.model}: no {PREPROCESSOR_CONFIG}, which a vision-language "
                    "model needs for its images")
