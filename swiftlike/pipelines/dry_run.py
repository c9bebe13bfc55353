"""`--dry_run` on a training command: its per-device memory plan (train/memory_plan.py), printed and returned.

Only the model's config is read (the registry's for registered ids, so no network): no weights, no data, and no
output directory is created.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .. import accel
from ..errors import UserError
from ..models import attention
from ..hub import is_local
from ..models.loader import model_config, quiet_libraries
from ..models.rope import apply, describe, overrides, past_positions
from ..registry import find_model
from ..train.dpo import REFERENCE_FREE
from ..train.memory_plan import (FORMULA_TYPES, MEASURED_TYPES, MemoryPlan, Setup, architecture,
                                 GiB, fmt_params, gib, parse_size, plan, with_setup)

PHASES = {"forward and loss": "the activations kept for backward and the loss's buffers; gradients only where "
                               "they accumulate or DDP / ZeRO keep buffers",
          "start of backward": "every layer's activations, with the last layer's gradients in flight",
          "end of backward": "every gradient, with the first layer's activations still alive",
          "optimizer step": "every gradient and AdamW's temporaries",
          "recomputing a layer": "the layer checkpoints, one recomputed layer and its gradients in flight",
          "generation": "the KV cache of the rollouts"}


def dry_run(cfg, task: str) -> MemoryPlan:
    """The memory plan of training `cfg` (a validated SFTConfig or subclass) as `task`, printed as a table."""
    quiet_libraries()
    try:
        config = model_config(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature)
    except UserError as e:
        if find_model(cfg.model) is not None or is_local(cfg.model):
            raise
        raise UserError(f"--dry_run needs the config of {cfg.model!r}, which is neither a registered model (`wb "
                        f"models` lists those that plan offline) nor a local directory; {e}") from None
    arch = architecture(config)
    params = parts = None
    if arch.model_type not in FORMULA_TYPES or config.get_text_config() is not config:
        params, parts = _parameters_on_meta_device(config, cfg.model)
        arch = replace(arch, params_by="meta device",
                       notes=arch.notes + ("no formula for this architecture: parameters counted by building it on "
                                           "the meta device; activations as a Llama-style decoder of its widths",))
    setup = setup_for(cfg, task, arch, config)
    if cfg.full and (cfg.trainable_parameters or cfg.freeze_parameters):
        setup = replace(setup, trainable=_selected_on_meta_device(config, cfg, task == "rm"))
    capacity = parse_size(cfg.gpu_memory) if cfg.gpu_memory else None
    result = plan(arch, setup, cfg.model + (" miniature" if cfg.miniature else ""), capacity, params, parts)
    if setup.trainable is not None:
        result.notes.append("--trainable_parameters / --freeze_parameters: gradients and optimizer states of the "
                            "selected parameters; activations as for training every parameter (an upper bound)")
    changed = overrides(cfg.rope_scaling, config, cfg.sequence_length, cfg.trust_remote_code)  # (as the run would)
    if changed:
        result.notes.append(f"--rope_scaling: {describe(changed)}")
    if note := past_positions(apply(config, changed), cfg.sequence_length):
        result.notes.append(note)
    if arch.model_type not in MEASURED_TYPES:
        measured = ", ".join(MEASURED_TYPES)
        result.notes.append(f"the activation formula was checked against measured peaks for {measured} decoders; "
                            f"{arch.model_type} is derived the same way but not measured")
    print(render(result))
    return result


def setup_for(cfg, task: str, arch, config=None) -> Setup:
    """The options of a training command that memory depends on."""
    rank, targets, dropout = cfg.lora_rank, tuple(cfg.target_modules), cfg.lora_dropout
    if cfg.adapters:  # continued adapters keep their own rank and targets
        saved = json.loads((Path(cfg.adapters) / "adapter_config.json").read_text(encoding="utf-8"))
        rank = saved.get("r", rank)
        t = saved.get("target_modules") or targets
        targets = (t,) if isinstance(t, str) else tuple(t)
    if arch.experts and targets == ("all-linear",):
        dropout = 0.0  # attach_lora: peft adapts fused experts without dropout
    resolved = accel.resolve_dtype("bfloat16" if cfg.torch_dtype == "auto" else cfg.torch_dtype)
    dtype = str(resolved).removeprefix("torch.")  # bf16 -> bfloat16, as memory_plan names dtypes
    # the kernel the run will use on this machine (models/attention.py); without a config, the requested one
    chosen = attention.choose(cfg.attn_implementation, accel.device_type(), cfg.padding_free, config, resolved)[0] \
        if config is not None else cfg.attn_implementation
    attn = chosen or ("eager" if arch.attn_softcap else "sdpa")
    # a full-parameter run keeps a frozen copy of the model as the reference (LoRA's is the adapter-free model)
    if task in ("dpo", "kto"):
        reference = task == "kto" or cfg.loss_type not in REFERENCE_FREE
        reference = reference and not getattr(cfg, "precompute_ref_logps", False)  # (wb dpo's option)
    else:
        reference = task == "grpo" and cfg.beta != 0.0
    reference = reference and cfg.train_type == "full"
    devices = cfg.plan_devices or _sharding_devices(cfg)
    common = dict(task=task, method=cfg.train_type, dtype=dtype, batch=cfg.per_device_train_batch_size,
                  accumulation=cfg.gradient_accumulation_steps, gradient_checkpointing=cfg.gradient_checkpointing,
                  attn=attn, lora_rank=rank, lora_dropout=dropout, target_modules=targets, optim=cfg.optim,
                  zero=cfg.plan_zero,
                  devices=devices, reference_copy=reference, **_engine_options(cfg),
                  frozen=tuple(part for part, flag in (("vit", cfg.freeze_vit), ("aligner", cfg.freeze_aligner),
                                                       ("llm", cfg.freeze_llm)) if flag))
    if task != "grpo":
        return Setup(seq_len=cfg.max_length, padding_free=cfg.padding_free, **common)
    sequences = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    server = cfg.use_vllm and cfg.vllm_mode == "server"
    return Setup(seq_len=cfg.max_prompt_length + cfg.max_completion_length, padding_free=False,
                 generation_sequences=0 if cfg.use_vllm else (cfg.generation_batch_size or sequences),
                 prompt_len=cfg.max_prompt_length, completion_len=cfg.max_completion_length,
                 vllm_fraction=cfg.vllm_gpu_memory_utilization if cfg.use_vllm and not server else 0.0, **common)


def _engine_options(cfg) -> dict:
    """The engine and what it keeps in host memory (train/engines.py reads the same presets and files): --fsdp is
    FSDP2 (its cpu_offload puts the sharded weights, gradients and optimizer states on the host; without
    reshard_after_forward every layer stays gathered until its backward), --deepspeed its offload_optimizer and
    (ZeRO-3) offload_param; --plan_zero alone plans DeepSpeed's accounting."""
    from ..train.engines import deepspeed_config, fsdp_config

    if cfg.fsdp:
        fsdp = fsdp_config(cfg.fsdp)
        offload = bool(fsdp["cpu_offload"])
        return dict(engine="fsdp", offload_optimizer=offload, offload_params=offload,
                    reshard_after_forward=bool(fsdp["reshard_after_forward"]))
    if not cfg.deepspeed:
        return dict(engine="deepspeed" if cfg.plan_zero != "none" else "ddp")
    zero = deepspeed_config(cfg.deepspeed).get("zero_optimization", {})
    on_host = {key: (zero.get(key) or {}).get("device") == "cpu" for key in ("offload_optimizer", "offload_param")}
    return dict(engine="deepspeed", offload_optimizer=on_host["offload_optimizer"] and cfg.plan_zero != "none",
                offload_params=on_host["offload_param"] and cfg.plan_zero == "zero3")


def _sharding_devices(cfg) -> int:
    """The processes weights and optimizer states are sharded over: every process of every node (`wb` has set
    --nproc_per_node and --nnodes as it would launch them: the flags, else NPROC_PER_NODE and NNODES), those of one
    node under FSDP's hybrid sharding."""
    from ..train.engines import fsdp_config

    hybrid = bool(cfg.fsdp) and fsdp_config(cfg.fsdp)["sharding"] == "hybrid_shard"
    return cfg.nproc_per_node if hybrid else cfg.nproc_per_node * cfg.nnodes


def _meta_model(config, model: str, reward: bool = False):
    """The architecture built on the meta device (no memory); a reward model's with its score layer."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    from ..models.loader import auto_class

    try:
        with torch.device("meta"):
            if reward:  # (on a copy: the caller's config stays as it is)
                config = copy.deepcopy(config)
                config.num_labels = 1
                return AutoModelForSequenceClassification.from_config(config)
            return auto_class(config).from_config(config)
    except (ValueError, KeyError, ImportError, OSError) as e:
        raise UserError(f"cannot plan {model}: transformers cannot build its architecture "
                        f"({str(e).strip().splitlines()[0][:160]})") from None


def _selected_on_meta_device(config, cfg, reward: bool) -> int:
    """The parameters --trainable_parameters / --freeze_parameters leave to train (as the run selects them)."""
    from ..models.loader import freeze_vision_parts, select_trainable

    net = _meta_model(config, cfg.model, reward).requires_grad_(True)
    net = select_trainable(freeze_vision_parts(net, cfg), cfg)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _parameters_on_meta_device(config, model: str) -> tuple[int, dict | None]:
    """Exact parameter count of an architecture without a formula, built on the meta device (no memory), and of a
    vision-language model its parts as training tells them apart (models/loader.py's vision_part): "vit", "aligner",
    "llm" -> (parameters, the sum of in + out features of its nn.Linear layers but the output layer: what LoRA
    r x (in + out) adapts on all-linear); None for a text-only model."""
    import torch

    from ..models.loader import vision_part, vision_parts

    net = _meta_model(config, model)
    total = sum(p.numel() for p in net.parameters())
    if not vision_parts(net):
        return total, None
    parts: dict[str, list[int]] = {}
    for name, p in net.named_parameters():
        parts.setdefault(vision_part(name), [0, 0])[0] += p.numel()
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            parts.setdefault(vision_part(f"{name}.weight"), [0, 0])[1] += module.in_features + module.out_features
    return total, {part: tuple(parts[part]) for part in ("vit", "aligner", "llm") if part in parts}


def _training_line(p: MemoryPlan) -> str:
    s = p.setup
    method = s.method if s.method == "full" else \
        f"{s.method} r={s.lora_rank} on {' '.join(s.target_modules)}"
    seqs = "pairs" if s.task in ("dpo", "rm") else "examples" if s.task == "kto" else \
        "completions" if s.task == "grpo" else "sequences"
    shard = "no ZeRO" if s.zero == "none" else s.zero.replace("zero", "ZeRO-")
    if s.engine == "fsdp":
        shard = "FSDP" + ("" if s.reshard_after_forward else " (reshard_after_forward false)")
    on_host = [what for what, flag in (("weights", s.offload_params), ("optimizer states", s.offload_optimizer))
               if flag]
    if on_host:
        shard += f" ({' and '.join(on_host)} offloaded to host memory)"
    return (f"{s.task}, {method}, {s.dtype}, batch {s.batch} {seqs} x {s.seq_len} tokens"
            + (f" x {s.accumulation} accumulated" if s.accumulation > 1 else "")
            + f", {'AdamW' if s.optim == 'adamw' else s.optim}, "
            f"{'gradient checkpointing' if s.gradient_checkpointing else 'no gradient checkpointing'}, "
            f"{s.attn}{' padding-free' if s.padding_free and s.task != 'grpo' else ''}, {shard} on {s.devices} "
            f"device{'s' if s.devices > 1 else ''}")


def render(p: MemoryPlan) -> str:
    a = p.arch
    counted = "counted from its config" if a.params_by == "formula" else "counted on the meta device"
    lines = ["[wb] dry run: memory per device, estimated from the model's config (no weights, data or output "
             "directory)",
             f"  model      {p.model} ({a.model_type}): {fmt_params(p.params)} parameters ({counted}), {a.layers} "
             f"layers, hidden {a.hidden:,}, vocabulary {a.vocab:,}",
             f"  training   {_training_line(p)}; {fmt_params(p.trainable)} trainable"]
    names = {"weights": "weights", "reference": "reference model", "gradients": "gradients",
             "optimizer": "optimizer states", "activations": "activations", "generation": "generation",
             "workspace": "workspace"}
    for part in p.parts:
        lines.append(f"  {names[part.name]:<18}{gib(part.bytes):>13}   {part.detail}")
    largest = max(p.phases, key=p.phases.get)
    lines.append(f"  {'peak':<18}{gib(p.peak):>13}   weights, optimizer states and workspace + the largest phase of "
                 f"a step: {largest} ({PHASES[largest]})")
    if p.host:
        lines.append(f"  {'host memory':<18}{gib(p.host):>13}   offloaded by the engine, per process (not on the "
                     f"device; a node holds this for each of its processes)")
    if p.capacity is not None:
        usable = p.capacity * (1 - p.setup.vllm_fraction)
        card = f"{p.capacity / GiB:g} GiB" + (f" ({gib(usable)} of it beside colocated vLLM)"
                                                if p.setup.vllm_fraction else "")
        margin = "with 10% allocator slack and 1 GiB for the CUDA context"
        if p.fits:
            lines.append(f"  fits {card}: yes, {gib(usable - p.needed)} to spare {margin}")
        else:
            lines.append(f"  fits {card}: no, {gib(p.needed - usable)} short {margin}" + _hints(p))
    for note in p.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _hints(p: MemoryPlan) -> str:
    """Options that lower the peak, each with the peak it gives."""
    s = p.setup
    tries = []
    if not s.gradient_checkpointing:
        tries.append(("--gradient_checkpointing", dict(gradient_checkpointing=True)))
    if s.attn == "sdpa" and p.detail.get("mask_layer", 0) * p.arch.layers > 0.1 * p.peak:
        tries.append(("--attn_implementation flash_attention_2", dict(attn="flash_attention_2")))
    if s.method != "full" and s.lora_dropout > 0:
        tries.append(("--lora_dropout 0", dict(lora_dropout=0.0)))
    if s.method == "full":
        tries.append(("--lora", dict(method="lora")))
    if s.batch > 1:
        tries.append((f"--per_device_train_batch_size 1 --gradient_accumulation_steps {s.batch * s.accumulation}",
                      dict(batch=1, accumulation=s.batch * s.accumulation)))
    if s.method == "full" and s.zero != "zero3" and s.devices > 1:
        tries.append(("--plan_zero zero3", dict(zero="zero3")))
    peaks = [(flag, with_setup(p, **change).peak) for flag, change in tries]
    shown = [f"{flag} ({gib(peak)})" for flag, peak in peaks if peak < p.peak]  # (accumulation keeps DDP's buckets)
    return "; peak with " + ", ".join(shown) if shown else ""
