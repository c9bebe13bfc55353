"""`wb export`: rebuild the model a checkpoint describes and write it as a standard Hugging Face model."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from .. import accel
from ..config import ExportConfig
from ..errors import UserError
from ..data.dataset import encode_rows, load_rows
from ..data.images import PREPROCESSOR_CONFIG
from ..data.videos import VIDEO_PREPROCESSOR_CONFIG
from ..export import (atomic_directory, merged_model, merged_tensors, model_card, nf4_weights, parse_size,
                      prepare_output, renders_as, shards_of, stream_merge, stream_plan, tensor_shapes,
                      trained_on_4bit, with_chat_template, write_config, write_hf, write_metadata)
from ..export.quantize import (check_method, check_model, fitted_weights, fp8_weights, quantize_directory,
                               reload)
from ..models.loader import model_config, quiet_libraries
from ..models.perplexity import perplexity
from ..models.rope import apply
from ..models.resolve import base_weights, load_reference_tokenizer, resolve, stored_dtype, template_name
from ..templates import TEMPLATES, get_template

CALIBRATION_LENGTH = 1024  # tokens per calibration row (longer rows are cut)


def run_export(cfg: ExportConfig) -> Path:
    quiet_libraries()
    ref = resolve(cfg.model, cfg.adapters, False, cfg.hub, cfg.template)
    if ref.adapters and not cfg.merge:
        raise UserError("--adapters: add --merge to fold the LoRA adapters into the base weights (an adapter "
                        "checkpoint is already in the PEFT format for serving stacks that load adapters)")
    out = prepare_output(cfg.output_dir or _default_output(ref, cfg.to), cfg.overwrite_output_dir,
                         (ref.adapters, ref.base))
    shard_bytes = parse_size(cfg.max_shard_size)  # one reading for every writer, checked before any work
    base = base_weights(ref, cfg.trust_remote_code)
    # what cannot be written is refused (as the run changed it: --rope_scaling)
    config = apply(model_config(base, trust_remote_code=cfg.trust_remote_code), ref.overrides)
    if cfg.quant_method:
        if ref.task == "rm":
            raise UserError("--quant_method: a reward model exports merged, unquantized (its score head is not a "
                            "language model to measure); drop --quant_method")
        check_method(cfg.quant_method, cfg.quant_bits)
        check_model(cfg.quant_method, config)
    if cfg.to == "gguf":
        from ..export.gguf import check_supported

        if ref.task == "rm":
            raise UserError("--to gguf: a reward model (a score head, not a language model) exports as a Hugging "
                            "Face model; drop --to gguf")
        check_supported(config)
    # `auto`: as stored, not as this machine computes best: the same command writes the same file on a CPU and a GPU;
    # a GGUF is merged in float32 and rounded once, to --gguf_type (through bf16 first, a LoRA update lost ~8x more)
    if cfg.torch_dtype != "auto":
        dtype = accel.resolve_dtype(cfg.torch_dtype)
    else:
        dtype = torch.float32 if cfg.to == "gguf" else stored_dtype(base)
    tokenizer = load_reference_tokenizer(ref, cfg.trust_remote_code)
    template = get_template(template_name(ref, tokenizer), tokenizer)
    vision = template.vision is not None
    if vision and cfg.quant_method:  # (--to gguf refuses them above, by architecture)
        raise UserError("--quant_method does not write vision-language models yet; export the merged model (--merge) "
                        "and quantize it with its own tools")
    processor = _processor_dir(ref, base) if vision else None
    # else the bundled Jinja of the run's template; always for a VL model, whose tokenizer may carry a text-only one
    # native: the run rendered with the model's own chat template: its registered one; for a model the registry
    # does not know, its tokenizer's Jinja, or a named template that Jinja renders identically
    if ref.meta is not None:
        native = template.name == ref.meta.template
    else:
        native = template.name not in TEMPLATES or renders_as(tokenizer, template)
    native = native and not vision
    tokenizer = with_chat_template(tokenizer, template, native)
    calibration = _calibration(cfg.dataset, template) if cfg.quant_method else None
    kind = f"GGUF {cfg.gguf_type}" if cfg.to == "gguf" else str(dtype).replace("torch.", "")
    if cfg.quant_method:
        kind = f"{cfg.quant_method} {cfg.quant_bits}-bit, computing in {kind}"
    print(f"[wb] export: {ref.adapters or ref.base} -> {out} ({kind}{', adapters merged' if ref.adapters else ''})",
          flush=True)
    streamed = _stream_plan(ref, cfg, vision, base)
    model = None if streamed else merged_model(ref, dtype, tokenizer.pad_token_id, cfg.trust_remote_code)
    args = {**ref.args, "template": template.name, "exported_from": ref.adapters or ref.base,
            "export": {"merge": bool(ref.adapters), "torch_dtype": str(dtype).replace("torch.", ""), "to": cfg.to,
                       **({"gguf_type": cfg.gguf_type} if cfg.to == "gguf" else {})},
            "final_metrics": _final_metrics(ref.checkpoint)}
    args.pop("base_model_dir", None)  # the export is its own base
    with atomic_directory(out) as tmp:
        if streamed:
            _write_streamed(streamed, ref, cfg, base, config, dtype, tokenizer, template, tmp, out.name, shard_bytes)
        elif cfg.to == "gguf":
            from ..export.gguf import modelfile, write_gguf

            name = f"{out.name}-{cfg.gguf_type}.gguf"  # (as the card below names it)
            write_gguf(model, tokenizer, template, tmp / name, cfg.gguf_type, out.name, shown=ref.added_ids)
            (tmp / "Modelfile").write_text(modelfile(name, template, tokenizer), encoding="utf-8")
        elif cfg.quant_method:
            args["export"]["quantization"] = _quantize(model, tokenizer, template, tmp, cfg, dtype, calibration,
                                                       shard_bytes)
        else:
            write_hf(model, tokenizer, template, tmp, shard_bytes)
            if processor is not None:  # the image (and video) processing the model was trained with
                for name in (PREPROCESSOR_CONFIG, VIDEO_PREPROCESSOR_CONFIG):
                    if (processor / name).is_file():
                        shutil.copyfile(processor / name, tmp / name)
        auto = "AutoModelForImageTextToText" if vision else \
            "AutoModelForSequenceClassification" if ref.task == "rm" else "AutoModelForCausalLM"
        gguf = f"{out.name}-{cfg.gguf_type}.gguf" if cfg.to == "gguf" else None
        write_metadata(tmp, args, model_card(ref, args, bool(ref.adapters), out.name, auto, gguf))
    loads = "llama.cpp / `ollama create NAME -f Modelfile`" if cfg.to == "gguf" else \
        f"{auto} / AutoTokenizer{' / AutoImageProcessor' if vision else ''}; `wb infer --model {out}`"
    print(f"[wb] export: wrote {out} (loads with {loads})")
    if cfg.push_to_hub:
        from ..export.upload import push

        print(f"[wb] export: uploaded to {push(out, cfg.hub_model_id, cfg.hub, cfg.hub_private, cfg.hub_token)}")
    return out


def _stream_plan(ref, cfg: ExportConfig, vision: bool, base: str):
    """The streaming merge's plan (export/stream.py) for a plain LoRA adapter exported as a Hugging Face model or
    GGUF, or for a full checkpoint exported as GGUF; None where the model is loaded in memory."""
    if cfg.quant_method or vision or ref.task == "rm" or not (ref.adapters or cfg.to == "gguf"):
        return None
    if not ref.adapters:
        shards = shards_of(Path(base))
        return ({}, shards) if shards else None
    plan = stream_plan(ref.adapters, base)
    if isinstance(plan, str):
        print(f"[wb] export: merging in memory ({plan}: not streamed shard by shard)", flush=True)
        return None
    return plan


def _bar(desc: str, total: int | None, unit: str):
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None)  # (a tty)


def _write_streamed(plan, ref, cfg: ExportConfig, base: str, config, dtype, tokenizer, template, tmp: Path,
                    title: str, shard_bytes: int) -> None:
    """`base`: the base weights' directory, `config` its config (as run_export read them)."""
    pairs, shards = plan
    nf4 = set()
    if ref.adapters and trained_on_4bit(ref.args):  # QLoRA: into the NF4 base it was trained on, dequantized
        nf4 = nf4_weights(base, dtype, cfg.trust_remote_code)
    with _bar("wb export", None, "tensor") as bar:
        if cfg.to == "gguf":
            from ..export.gguf import modelfile, write_gguf_tensors

            name = f"{title}-{cfg.gguf_type}.gguf"
            write_gguf_tensors(config, tensor_shapes(shards), merged_tensors(pairs, shards, dtype, nf4), tokenizer,
                               template, tmp / name, cfg.gguf_type, title, bar, shown=ref.added_ids)
            (tmp / "Modelfile").write_text(modelfile(name, template, tokenizer), encoding="utf-8")
            return
        stream_merge(pairs, shards, dtype, tmp, shard_bytes, bar, nf4)
    write_config(base, dtype, tokenizer, template, tmp, cfg.trust_remote_code, ref.overrides)


def _calibration(dataset: list[str], template) -> tuple[str, list[dict]]:
    rows = load_rows(dataset)
    encoded, _ = encode_rows(rows, template, CALIBRATION_LENGTH, truncation_strategy="right")
    return ", ".join(dataset), encoded


def _quantize(model, tokenizer, template, tmp: Path, cfg: ExportConfig, dtype, calibration,
              shard_bytes: int) -> dict:
    """Write the unquantized export to tmp/.unquantized, quantize it into tmp, reload what was written as a user
    would, and measure both models on the calibration rows."""
    data, encoded = calibration
    before = perplexity(model, encoded)
    print(f"[wb] export: quantizing ({cfg.quant_method}, {cfg.quant_bits}-bit)", flush=True)
    if cfg.quant_method in ("fp8", "gptq", "awq"):  # quantized in memory, saved as compressed-tensors
        if cfg.quant_method != "fp8":
            with _bar(cfg.quant_method, None, "layer") as bar:
                compressor = fitted_weights(model, cfg.quant_method, [row["input_ids"] for row in encoded],
                                            cfg.quant_bits, bar)
        else:
            compressor = fp8_weights(model)
        write_hf(model, tokenizer, template, tmp, shard_bytes)
        compressor.update_config(tmp)
    else:  # transformers' quantizer, applied as the unquantized export loads
        write_hf(model, tokenizer, template, tmp / ".unquantized", shard_bytes)
        quantize_directory(tmp / ".unquantized", tmp, cfg.quant_method, cfg.quant_bits, dtype, shard_bytes)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tmp / ".unquantized")
    try:
        after = perplexity(reload(tmp), encoded)
    except Exception as e:  # what was written must load: otherwise nothing is exported
        raise UserError(f"the {cfg.quant_method} {cfg.quant_bits}-bit export does not reload with transformers: "
                        f"{str(e).splitlines()[0]}") from None
    print(f"[wb] export: perplexity on {data}: {before:.4g} unquantized, {after:.4g} quantized", flush=True)
    return {"method": cfg.quant_method, "bits": cfg.quant_bits, "calibration": data, "rows": len(encoded),
            "perplexity_unquantized": round(before, 4), "perplexity_quantized": round(after, 4)}


def _processor_dir(ref, base: str) -> Path:
    """The folder of a vision-language checkpoint's preprocessor_config.json (with the run's pixel bounds; its
    video_preprocessor_config.json beside it), else its base's (`base`: the base weights' directory)."""
    for folder in (ref.adapters, ref.base, base):
        if folder and (Path(folder) / PREPROCESSOR_CONFIG).is_file():
            return Path(folder)
    raise UserError(f"{ref.adapters or ref.base}: no {PREPROCESSOR_CONFIG} in the checkpoint or its base model; a "
                    "vision-language export needs its image processor")


def _default_output(ref, to: str) -> str:
    source = Path(ref.adapters or ref.base)
    return str(source.parent / f"{source.name}-{'gguf' if to == 'gguf' else 'merged'}")


def _final_metrics(checkpoint: str | None) -> dict:
    state = Path(checkpoint or "") / "trainer_state.json"
    if not checkpoint or not state.is_file():
        return {}
    history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
    logged = [h for h in history if "loss" in h]
    last = {k: v for k, v in (logged[-1] if logged else {}).items() if k in ("step", "loss", "epoch")}
    evals = [h for h in history if "eval_loss" in h]
    return {**last, **({"eval_loss": evals[-1]["eval_loss"]} if evals else {})}
