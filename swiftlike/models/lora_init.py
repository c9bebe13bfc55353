"""--init_lora_weights: how new LoRA adapters start. `default` (A random, B zero: the model starts unchanged) and
`gaussian` leave the base weights alone; PiSSA (`pissa`, or `pissa_niter_N`: a randomized SVD of N iterations) and
OLoRA (`olora`) start the adapters from the principal part of each adapted weight (its top singular vectors, or a
QR decomposition) and take that part out of the base weight, so the model also starts unchanged but trains its
principal directions (PEFT does the decomposition).

Such a run trains against a changed base, which no other program has. Its checkpoints are therefore written as
plain LoRA adapters on the original base (PEFT's conversion, done here on the saved files): with A0, B0 the
adapters at the start and A, B now, W_res + s BA = W + s (BA - B0A0) = W + s [B | -B0] [A ; A0], a LoRA of twice
the rank with the same scale (alpha doubled; with rsLoRA times sqrt 2). infer, deploy, export, vLLM and
`--adapters` read them as any LoRA checkpoint. Resuming splits them again: A, B train on, and the base becomes
W - s B0A0 exactly as PEFT computed it at the start (no second decomposition).

    check(kind)                         -> the option checked
    check_model(model, cfg)             -> what PiSSA / OLoRA cannot decompose, refused
    mutates_base(kind)                  -> whether the run trains against a changed base (PiSSA, OLoRA)
    initial_adapters(model)             -> A0, B0 as the run starts (kept for the conversion)
    write_as_plain_lora(directory, A0B0) the saved checkpoint's adapters converted in place
    resume(model, directory)            -> a resumed run's adapters and changed base, from its checkpoint
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..errors import UserError

FLAG = "--init_lora_weights"
KINDS = ("default", "gaussian", "pissa", "pissa_niter_N", "olora")
_VALID = re.compile(r"default|gaussian|pissa|pissa_niter_[1-9][0-9]*|olora")
ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def check(kind: str) -> None:
    if not _VALID.fullmatch(kind):
        raise UserError(f"{FLAG}: {kind!r} is not one of {', '.join(KINDS)} (N: iterations of the randomized SVD, "
                        "e.g. pissa_niter_16)")


def check_model(model, cfg) -> None:
    """What PiSSA / OLoRA cannot decompose, refused before PEFT changes any weight: a weight another layer shares
    (a tied output layer and input embedding: the other would change too) and MoE experts fused into one 3-D
    weight (PEFT decomposes 2-D weights)."""
    from .loader import _fused_experts

    kind, targets = cfg.init_lora_weights, cfg.target_modules
    all_linear = targets in (["all-linear"], "all-linear")
    output, embed = model.get_output_embeddings(), model.get_input_embeddings()
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    if output is not None and output.weight is embed.weight and not all_linear and \
            {names.get(id(output)), names.get(id(embed))} & set(targets):
        raise UserError(f"--init_lora_weights {kind}: the output layer shares its weight with the input embedding "
                        f"here, and taking the principal part out of one would change the other; leave "
                        f"{names[id(output)]} and {names[id(embed)]} out of --target_modules")
    if _fused_experts(model) and (all_linear or any("expert" in t for t in targets)):
        raise UserError(f"--init_lora_weights {kind}: the MoE experts' weights are fused (3-D), which PiSSA / OLoRA "
                        "do not decompose; name the attention (and dense) layers in --target_modules, e.g. q_proj "
                        "k_proj v_proj o_proj")


def peft_value(kind: str):
    """The value of PEFT's LoraConfig.init_lora_weights."""
    return True if kind == "default" else kind


def mutates_base(kind: str | None) -> bool:
    return bool(kind) and (kind.startswith("pissa") or kind == "olora")


def _pairs(state: dict) -> dict[str, tuple[str, str]]:
    """{module: (its lora_A key, its lora_B key)} of an adapter state dict."""
    return {k[: -len(".lora_A.weight")]: (k, k.replace(".lora_A.", ".lora_B.")) for k in state
            if k.endswith(".lora_A.weight")}


def initial_adapters(model) -> dict[str, torch.Tensor]:
    """The adapters' A0 and B0 right after PEFT made them (float32, on the CPU), under the keys they are saved
    with."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name="default")
    return {k: v.detach().to("cpu", torch.float32, copy=True) for pair in _pairs(state).values() for k, v in
            ((key, state[key]) for key in pair)}


def write_as_plain_lora(directory: Path, initial: dict[str, torch.Tensor]) -> None:
    """The adapters PEFT saved in `directory` (A, B of rank r, on the changed base) rewritten as the LoRA of rank 2r
    on the original base: [A ; A0] and [B | -B0], alpha doubled (rsLoRA: times sqrt 2), `init_lora_weights`
    true (loading it changes no base weight)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(directory / ADAPTER_FILE))
    for a_key, b_key in _pairs(weights).values():
        if a_key not in initial:
            raise RuntimeError(f"{a_key}: no starting value kept for the conversion")
        a, b = weights[a_key], weights[b_key]
        weights[a_key] = torch.cat([a, initial[a_key].to(a.dtype)], dim=0).contiguous()
        weights[b_key] = torch.cat([b, -initial[b_key].to(b.dtype)], dim=1).contiguous()
    save_file(weights, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
    path = directory / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["r"] *= 2
    config["lora_alpha"] *= math.sqrt(2) if config.get("use_rslora") else 2
    for key in ("rank_pattern", "alpha_pattern"):
        config[key] = {k: v * 2 for k, v in (config.get(key) or {}).items()}
    config["init_lora_weights"] = True  # (args.json keeps what the run started with: resume splits it again)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_adapter_weights(model, weights: dict, directory: Path) -> None:
    """A checkpoint's adapter weights into the run's adapters; a one-line error where they do not fit (another
    --lora_rank, --target_modules or model than the run was started with)."""
    from peft import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as e:  # (size mismatches)
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:200])
        raise UserError(f"{directory}: its adapters do not fit this run's ({detail}); resume with the LoRA options "
                        "it was started with") from None
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{directory}: its adapters do not fit this run's ({result.unexpected_keys[0]} has no place "
                        "in the model); resume with the LoRA options it was started with")


def resume(model, directory: Path) -> dict[str, torch.Tensor]:
    """A PiSSA / OLoRA run resumed from a checkpoint written by write_as_plain_lora: `model` has fresh adapters of
    rank r on the original base; they take the trained A, B, and each adapted base weight becomes W - s B0A0 (in
    float32, then its own dtype, as PEFT's initialisation computed it). Returns A0, B0 (as initial_adapters)."""
    from safetensors.torch import load_file

    weights = load_file(str(directory / ADAPTER_FILE))
    trained, starts, initial = dict(weights), {}, {}
    for module, (a_key, b_key) in _pairs(weights).items():
        a, b = weights[a_key], weights[b_key]
        r = a.shape[0] // 2
        trained[a_key], trained[b_key] = a[:r].contiguous(), b[:, :r].contiguous()
        initial[a_key], initial[b_key] = a[r:].float().contiguous(), (-b[:, r:]).float().contiguous()
        starts[module] = (initial[b_key], initial[a_key])
    load_adapter_weights(model, trained, directory)
    layers = dict(model.named_modules())  # (a saved key's module is named as the PEFT model names it)
    for module, (b0, a0) in starts.items():
        layer = layers.get(module)
        if layer is None or not hasattr(layer, "get_base_layer"):
            raise UserError(f"{directory}: no adapted layer {module} in the model; resume with the options the run "
                            "was started with")
        base = layer.get_base_layer()
        with torch.no_grad():
            w = base.weight
            w.copy_((w.to(torch.float32) - layer.scaling["default"] * b0.to(w.device) @ a0.to(w.device)).to(w.dtype))
    return initial
