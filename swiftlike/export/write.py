"""Write an export: a standard Hugging Face model directory that loads without swiftlike.

    model.safetensors (sharded above --max_shard_size), config.json,
    generation_config.json   eos_token_id = the template's stop tokens (generate, vLLM and TGI stop where our
                             template ends a turn),
    tokenizer files          with a chat_template that renders what our template renders,
    args.json, README.md     the run's settings and a model card.

The directory is built under a hidden temporary name and renamed into place when complete, so a killed export
never leaves a directory that looks like a model.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..disk import settle
from ..errors import UserError
from ..hub import is_local
from ..models.loader import ASSETS


def prepare_output(output_dir: str, overwrite: bool, sources: tuple = ()) -> Path:
    """The export's directory: refused when it is not empty (unless `overwrite`), is a file, or is or contains
    what the export is read from (replacing it would delete the checkpoint)."""
    out = Path(os.path.abspath(Path(output_dir).expanduser()))  # '.' and '..' have no name to write beside
    if out == Path.cwd() or out in Path.cwd().parents:  # replacing it would delete the shell's own directory
        raise UserError(f"--output_dir {output_dir} is this directory or holds it: name a new directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file, not a directory")
    for source in sources:
        if source and Path(source).exists() and (out.resolve() == Path(source).resolve()
                                                 or out.resolve() in Path(source).resolve().parents):
            raise UserError(f"--output_dir {out} holds {source}, which is exported from: choose another directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty; add --overwrite_output_dir to replace it, or "
                            "choose another --output_dir")
    return out


_CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "2+2?"}]
_PROBES = (_CHAT, [{"role": "system", "content": "Be brief."}, *_CHAT])  # (default system prompts differ)


def renders_as(tokenizer, template) -> bool:
    """Whether the tokenizer's own chat template renders probe chats (and their generation prompts) as `template`
    does: a local model's own Jinja can then ship for a run that named its template."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        return all(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                   == template.render_text(chat, add_generation_prompt=True) for chat in _PROBES)
    except Exception:  # noqa: BLE001  (a Jinja that refuses a system message, or ours: not the same template)
        return False


def official_chat_template(template_name: str, tokenizer, native: bool = True) -> str | None:
    """The chat template to ship: the tokenizer's own when the run used the model's own template (a real model's is
    the official one), else the official Jinja bundled for the template the run trained with."""
    own = getattr(tokenizer, "chat_template", None)
    if own and native:
        return own
    bundled = ASSETS / "chat_templates" / f"{template_name}.jinja"
    if bundled.is_file():
        return bundled.read_text(encoding="utf-8")
    if not native:
        raise UserError(f"the run trained with template {template_name}, for which no chat template ships with "
                        "swiftlike; the export would render prompts unlike training (export with the model's own "
                        "--template, or set the tokenizer's chat_template yourself)")
    return own


@contextmanager
def atomic_directory(out: Path):
    """A hidden temporary directory that becomes `out` only when everything in it was written."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    for left in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        if left == tmp or not _alive(left.name.rsplit("-", 1)[-1]):  # a killed export's: its process is gone
            if ".old-" in left.name and not out.exists():  # killed between the two renames: the old one back
                os.replace(left, out)
            else:
                shutil.rmtree(left, ignore_errors=True)
    made = [d for d in out.parents if not d.exists()]  # (parents this export creates, removed if it fails)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        settle(tmp)
        _publish(tmp, out)
    except BaseException as e:  # disk full, permissions, Ctrl-C: nothing half-written is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            raise UserError(f"{out}: cannot write the export: {e.strerror or e}") from None
        raise


def _publish(tmp: Path, out: Path) -> None:
    """`tmp` renamed to `out`; an export already there (--overwrite_output_dir) is moved aside first and deleted
    only once the new one is in place, or moved back when it cannot be."""
    if not out.exists():
        os.replace(tmp, out)
        return
    aside = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def with_chat_template(tokenizer, template, native: bool = True):
    """The tokenizer, carrying the chat template that renders as our template does (see official_chat_template)."""
    chat_template = official_chat_template(template.name, tokenizer, native)
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def write_hf(model, tokenizer, template, directory: Path, max_shard_size: int) -> None:
    model.config.use_cache = True
    model.generation_config = generation_config(model.config, getattr(model, "generation_config", None), template,
                                                tokenizer)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(directory)  # carrying its chat template (with_chat_template)


def write_config(base: str, dtype, tokenizer, template, directory: Path, trust_remote_code: bool = False,
                 overrides: dict | None = None) -> None:
    """config.json and generation_config.json of weights written without a model object (export/stream.py):
    the base's, with the run's `overrides` (models/rope.py), in the export dtype, stopping at the template's stop
    tokens; and a remote-code model's Python files (its config.json's auto_map names them), without which it does
    not load."""
    from transformers import AutoConfig, GenerationConfig

    from ..models.rope import apply

    config = apply(AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code), overrides or {})
    if getattr(config, "auto_map", None):
        for code in Path(base).glob("*.py"):
            shutil.copyfile(code, directory / code.name)
    config.dtype, config.use_cache = dtype, True
    try:
        gen = GenerationConfig.from_pretrained(base)
    except OSError:  # the base has none
        gen = None
    config.save_pretrained(directory)
    generation_config(config, gen, template, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_metadata(directory: Path, args: dict, card: str) -> None:
    (directory / "args.json").write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(card, encoding="utf-8")


def generation_config(config, gen, template, tokenizer):
    """`gen` (or one made from the model's config) whose eos_token_id is the template's stop tokens."""
    from transformers import GenerationConfig

    stops = list(template.stop_token_ids) or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    gen = gen or GenerationConfig.from_model_config(config)
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def model_card(ref, args: dict, merged: bool, title: str, auto_class: str = "AutoModelForCausalLM",
               gguf_file: str | None = None) -> str:
    """README.md: what the export is, how it was trained, how to load it (a GGUF with llama.cpp and Ollama)."""
    metrics = args.get("final_metrics") or {}
    # the hub's metadata names a hub repository; a local directory's path is not one (the hub would reject it)
    base = [] if is_local(ref.model) or ref.model.count("/") != 1 else [f"base_model: {ref.model}"]
    lines = [
        "---", *base, f"library_name: {'gguf' if gguf_file else 'transformers'}", "tags: [swiftlike]", "---", "",
        f"# {title}", "",
        f"Exported by swiftlike {__version__} from `{ref.adapters or ref.base}`"
        + (" (LoRA adapters merged into the base weights)." if merged else "."), "",
        "| | |", "|---|---|",
        f"| base model | `{ref.model}` |",
        f"| method | `wb {ref.task}`, {args.get('train_type', 'full')} |",
        f"| template | `{args.get('template', '')}` |",
        f"| data | {', '.join(f'`{d}`' for d in args.get('dataset', [])) or 'unknown'} |",
    ]
    lora = args.get("train_type", "full") != "full"
    for key in ("learning_rate", "lr_scheduler_type", "optim", "num_train_epochs", "max_steps",
                "per_device_train_batch_size", "gradient_accumulation_steps", *(("lora_rank", "lora_alpha") if lora
                                                                                else ()), "max_length", "seed"):
        if args.get(key) is not None:
            lines.append(f"| {key} | {args[key]} |")
    for key in ("trainable_parameters", "freeze_parameters"):  # full training of a part
        if args.get(key):
            lines.append(f"| {key} | {' '.join(f'`{p}`' for p in args[key])} |")
    if lora and args.get("init_lora_weights", "default") != "default":
        lines.append(f"| init_lora_weights | {args['init_lora_weights']} |")
    if args.get("config_overrides"):
        from ..models.rope import describe

        lines.append(f"| rope_scaling | {describe(args['config_overrides'])} |")
    for key, value in metrics.items():
        lines.append(f"| {key} | {value} |")
    quant = (args.get("export") or {}).get("quantization")
    if quant:
        lines += ["", "## Quantization", "",
                  f"{quant['method']} {quant['bits']}-bit weights. Perplexity on {quant['rows']} rows of "
                  f"`{quant['calibration']}` (the trained tokens of each row), measured by reloading this directory "
                  "with transformers:", "",
                  "| model | perplexity |", "|---|---|",
                  f"| unquantized | {quant['perplexity_unquantized']} |",
                  f"| quantized | {quant['perplexity_quantized']} |"]
    if gguf_file:
        lines += ["", f"`{gguf_file}` (its tokenizer and chat template inside) and an Ollama `Modelfile`:", "",
                  "```bash", f"llama-cli -m {gguf_file} -cnv",
                  f"ollama create {title} -f Modelfile && ollama run {title}", "```", ""]
    else:
        lines += ["", "```python", f"from transformers import {auto_class}, AutoTokenizer",
                  "tokenizer = AutoTokenizer.from_pretrained(PATH)", f"model = {auto_class}.from_pretrained(PATH)",
                  "```", ""]
    return "\n".join(lines)
