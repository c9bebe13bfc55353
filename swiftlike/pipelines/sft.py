"""`wb sft`, `wb pt`, `wb dpo`, `wb kto`, `wb rm`: one pipeline (data -> model -> trainer), with what differs per
command declared in METHODS (its rows, batching and objective). `wb grpo` (pipelines/grpo.py) reuses the pieces."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from .. import __version__, accel
from ..config import SFTConfig
from ..data.collate import ImageCollate, collate_padded, collate_padding_free
from ..data.images import PREPROCESSOR_CONFIG, ImageProcessing
from ..data.videos import VIDEO_PREPROCESSOR_CONFIG
from ..data.packing import pack
from ..data.pairs import KTOCollate, collate_pairs, pair_sequences
from ..data.dataset import WHERE, DataStats, NoRowsLeft, encode_rows, hold_out, iter_rows, load_rows
from ..data.stream import LazyCollate, RowStream
from ..errors import UserError, intact
from ..models import attach_lora, build_miniature, load_model, load_tokenizer
from ..models import lora_init
from ..models.lora_compute import compute_in_stream_dtype
from ..models.loader import (freeze_vision_parts, model_config, prepare_4bit, quiet_libraries, select_trainable,
                               trained_names, vision_parts)
from ..models.resolve import (ModelRef, added_tokens, base_weights, config_overrides, read_args, resolve,
                              template_name)
from ..models.tokens import (add_tokens, embedding_rows, listed, rebuild_rows, refuse_rowless_tokens,
                             trainable_rows)
from ..registry import find_model
from ..templates import get_template
from ..templates.text import TextTemplate
from ..train.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints, processes_of, write_atomic
from ..train.tracking import check_tracker
from ..train.dpo import REFERENCE_FREE
from ..train.trainer import LoopSettings, Trainer, TrainResult
from .eval import after_training

BASE_MODEL_DIR = "base_model"


def model_ref(cfg) -> ModelRef:
    """What a training command's --model / --miniature / --hub / --template point to."""
    return resolve(cfg.model, miniature=cfg.miniature, hub=cfg.hub, template=cfg.template)


def resolve_template_name(cfg, tokenizer=None) -> str:
    """The template a training command renders with (models/resolve.py decides)."""
    return template_name(model_ref(cfg), tokenizer)


def _resume_point(cfg: SFTConfig) -> Path | None:
    if cfg.resume_from_checkpoint:
        path = Path(cfg.resume_from_checkpoint)
        if not path.is_dir():
            raise UserError(f"--resume_from_checkpoint {path}: no such checkpoint directory")
        step = checkpoint_step(path)
        later = [c.name for c in list_checkpoints(cfg.output_dir) if step is not None and checkpoint_step(c) > step]
        if later and not cfg.overwrite_output_dir:  # its first save would replace them (a branch of the run)
            raise UserError(f"{cfg.output_dir} holds {', '.join(later)}, later than {path.name}: continuing from "
                            f"{path.name} there replaces them; add --overwrite_output_dir for that, or choose "
                            "another --output_dir")
        return path
    ckpt = latest_checkpoint(cfg.output_dir)
    if cfg.resume:
        if ckpt is None:
            raise UserError(f"--resume: no checkpoint in {cfg.output_dir}")
        return ckpt
    if ckpt is not None and not cfg.overwrite_output_dir:
        raise UserError(f"{cfg.output_dir} already holds {ckpt.name}; add --resume to continue it, "
                        "--overwrite_output_dir to start again there, or choose another --output_dir")
    return None


def _base_weights(cfg: SFTConfig, out: Path) -> str:
    """Local directory with the base weights; a miniature is built once and kept in the run directory."""
    if not cfg.miniature:
        return base_weights(model_ref(cfg), cfg.trust_remote_code)
    base = out / BASE_MODEL_DIR
    identity = {"model": cfg.model, "seed": cfg.seed}
    marker = base / "miniature.json"
    built = json.loads(marker.read_text()) if marker.is_file() else None
    resuming = cfg.resume or cfg.resume_from_checkpoint
    reuse = built == identity or (resuming and built is None and (base / "config.json").is_file())  # older runs
    if accel.is_main_process() and not reuse:
        if resuming and built is not None:
            raise UserError(f"{base} is the miniature of another model or seed than --model {cfg.model} --seed "
                            f"{cfg.seed}; resume with the model and seed the run was started with")
        import shutil

        shutil.rmtree(base, ignore_errors=True)  # a miniature of another model: never train its weights
        model = build_miniature(cfg.model, cfg.hub, seed=cfg.seed)
        model.save_pretrained(base, safe_serialization=True)
        # the base's own tokenizer (this run's may have --new_special_tokens, which the base's rows lack)
        load_tokenizer(cfg.model, cfg.hub, miniature=True).save_pretrained(base)
        meta = find_model(cfg.model)
        if meta is not None and meta.processor:  # a vision-language model's image (and video) processor
            write_atomic(base / PREPROCESSOR_CONFIG, json.dumps(meta.processor, indent=2) + "\n")
            if meta.video_processor:
                write_atomic(base / VIDEO_PREPROCESSOR_CONFIG, json.dumps(meta.video_processor, indent=2) + "\n")
        write_atomic(marker, json.dumps(identity) + "\n")
    if accel.world_size() > 1:
        import torch.distributed as dist

        dist.barrier()
    return str(base)


@dataclass(frozen=True)
class Method:
    """What sets one training command apart: the rows it reads, how they are batched, what is optimised."""

    rows: str                                  # the canonical rows load_rows produces: sft | pt | preference | kto
    pairwise: bool = False                     # encoded as pairs / labelled answers, batched by `collate`
    reward_head: bool = False                  # a sequence-classification head instead of the LM head
    objective: Callable | None = None          # (cfg, model, base_dir, dtype, added tokens) -> objective; None: LM loss
    collate: Callable | None = None            # (template) -> the batching of its rows


def _reward_objective(cfg, model, base_dir, dtype, added):  # noqa: ARG001 (the objectives' signature)
    from ..train.dpo import RewardObjective

    return RewardObjective(model, cfg.center_rewards_coefficient)


def _pairs_collate(template):
    if template.vision is None:
        return collate_pairs
    return ImageCollate(collate_pairs, template.image_processing, *template.image_token_ids, sequences=pair_sequences)


def _kto_collate(template):
    images = None if template.vision is None else \
        ImageCollate(None, template.image_processing, *template.image_token_ids)  # (KTOCollate uses its add_images)
    return KTOCollate(template, images)


def _task(cfg) -> str:
    from ..config import DPOConfig, KTOConfig, PTConfig, RMConfig

    for cls, task in ((PTConfig, "pt"), (DPOConfig, "dpo"), (KTOConfig, "kto"), (RMConfig, "rm")):
        if isinstance(cfg, cls):
            return task
    return "sft"


def _encoded(cfg: SFTConfig, template, specs: list[str]) -> tuple[list[dict], DataStats, bool]:
    """Encoded rows of some sources: from the cache when the same inputs were encoded before."""
    from ..data import cache

    settings = {k: getattr(cfg, k) for k in ("max_length", "truncation_strategy", "skip_bad_rows", "seed", "columns",
                                             "model_name", "model_author")}
    root, key = cache.cache_root(cfg.cache_dir), None
    if cfg.dataset_cache and template.vision is None:  # (image files are not part of the cache key)
        key = cache.fingerprint(specs, template, settings)
        hit = cache.load(root, key)
        if hit is not None:
            return (*hit, True)
    sources: list[str] = []
    stats = DataStats()
    raw = load_rows(specs, sources, cfg.skip_bad_rows, stats, cfg.seed, METHODS[_task(cfg)].rows, cfg.columns,
                    cfg.data_names())
    rows, stats = encode_rows(raw, template, cfg.max_length, sources, cfg.truncation_strategy, cfg.skip_bad_rows,
                              stats, cfg.dataset_num_proc)
    if key is not None and accel.is_main_process():
        cache.save(root, key, rows, stats)
    return rows, stats, False


def _encoded_pairs(cfg, template, specs: list[str]) -> tuple[list[dict], DataStats]:
    """Preference pairs (wb dpo) or labelled single answers (wb kto)."""
    from ..data.pairs import encode_kto, encode_pairs

    stats, sources = DataStats(), []
    rows = METHODS[_task(cfg)].rows
    raw = load_rows(specs, sources, cfg.skip_bad_rows, stats, cfg.seed, rows, cfg.columns, cfg.data_names())
    if rows == "kto":
        return encode_kto(raw, template, cfg.max_length, stats, sources, cfg.skip_bad_rows)
    if METHODS[_task(cfg)].reward_head and (i := next((i for i, r in enumerate(raw) if r.get("images")), None)) \
            is not None:
        raise UserError(f"{sources[i]}: images in wb rm rows are not read yet (wb sft and wb dpo read them)")
    return encode_pairs(raw, template, cfg.max_length, stats, sources, cfg.skip_bad_rows)


def prepare_data(cfg: SFTConfig, template) -> tuple[list[dict], list[dict], DataStats]:
    """Training rows (encoded, or canonical with --lazy_tokenize), validation rows (--val_dataset or a seeded
    --split_ratio, always encoded) and the data report."""
    pairwise = METHODS[_task(cfg)].pairwise
    if pairwise:
        rows, stats = _encoded_pairs(cfg, template, cfg.dataset)
        cached = False
    elif cfg.lazy_tokenize:
        stats, sources = DataStats(), []
        rows = load_rows(cfg.dataset, sources, cfg.skip_bad_rows, stats, cfg.seed, METHODS[_task(cfg)].rows,
                         cfg.columns, cfg.data_names())
        rows = [{**row, WHERE: where} for row, where in zip(rows, sources)]  # named when encoding refuses it
        cached = False
    else:
        rows, stats, cached = _encoded(cfg, template, cfg.dataset)
    stats.cached = cached
    eval_rows: list[dict] = []
    if cfg.val_dataset:
        eval_rows = _encoded_pairs(cfg, template, cfg.val_dataset)[0] if pairwise else \
            _encoded(cfg, template, cfg.val_dataset)[0]
    elif cfg.split_ratio > 0:
        rows, eval_rows = hold_out(rows, cfg.split_ratio, cfg.seed)
        if cfg.lazy_tokenize and not pairwise:  # validation batches are built from encoded rows
            try:
                eval_rows = encode_rows(eval_rows, template, cfg.max_length,
                                        truncation_strategy=cfg.truncation_strategy, skip_bad_rows=cfg.skip_bad_rows)[0]
            except NoRowsLeft as e:
                raise UserError(f"--split_ratio {cfg.split_ratio}: none of the held-out rows can be validated on "
                                f"({str(e).split(': ', 1)[-1]})") from None
    return rows, eval_rows, stats


def start_run(cfg: SFTConfig) -> tuple[bool, Path, Path | None]:
    """Process group, output directory, what to resume from, seeds: (is main process, output dir, checkpoint)."""
    quiet_libraries()
    check_tracker(cfg.report_to)
    accel.init_distributed()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = _resume_point(cfg)
    accel.seed_everything(cfg.seed)
    return accel.is_main_process(), out, resume_from


def cleans_up_on_failure(run: Callable) -> Callable:
    """A run that fails (or is interrupted) before its first checkpoint leaves no output directory it created:
    only what the run itself wrote there (args.json, a miniature's base_model) is removed with it. Every run, ended
    either way, restores the environment a one-process group changed (accel.release_process_group)."""
    import functools

    @functools.wraps(run)
    def wrapped(cfg):
        out = Path(cfg.output_dir)
        existed = out.exists()
        try:
            return run(cfg)
        except BaseException:
            # (several processes: the `wb` that launched them does it once all have stopped; another may still be
            # reading the miniature's base_model here)
            if not existed and accel.world_size() == 1:
                remove_if_only_regenerable(out)
            raise
        finally:
            accel.release_process_group()
    return wrapped


def remove_if_only_regenerable(out: Path) -> None:
    """A run directory that holds nothing but what a run writes before its first checkpoint, removed."""
    import shutil

    regenerable = {"args.json", BASE_MODEL_DIR}
    if out.is_dir() and all(p.name in regenerable or p.name.startswith(".") for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


@cleans_up_on_failure
def run_sft(cfg: SFTConfig) -> TrainResult:
    if cfg.dry_run:  # the memory plan only (a MemoryPlan): nothing loaded or written
        from .dry_run import dry_run

        return dry_run(cfg, _task(cfg))
    main, out, resume_from = start_run(cfg)
    evaluate_after = after_training(cfg)  # its datasets checked before any training
    method = METHODS[_task(cfg)]
    run_overrides(cfg, resume_from, announce=True)

    tokenizer, added = training_tokenizer(cfg, resume_from)
    if method.rows == "pt":  # plain text; the chat template (if known) is kept for inference afterwards
        template, name = TextTemplate(tokenizer), model_ref(cfg).template or cfg.model
    else:
        name = resolve_template_name(cfg, tokenizer)
        template = get_template(name, tokenizer, cfg.loss_scope)
    base_dir = None
    if template.vision is not None:  # the model's image processor decides how many tokens each image becomes
        base_dir = _base_weights(cfg, out)
        template.image_processing = ImageProcessing.from_dir(base_dir, cfg.min_pixels, cfg.max_pixels,
                                                             video_fps=cfg.video_fps,
                                                             video_max_pixels=cfg.video_max_pixels)
    if cfg.streaming:
        specs = list(cfg.dataset)
        rows = RowStream(lambda: iter_rows(specs, method.rows, cfg.columns, cfg.data_names(), cfg.skip_bad_rows),
                         cfg.seed)
        eval_rows = _encoded(cfg, template, cfg.val_dataset)[0] if cfg.val_dataset else []
        if main:
            print(f"[wb] data: streaming {', '.join(specs)}; rows are encoded as batches are drawn")
    else:
        rows, eval_rows, stats = prepare_data(cfg, template)
        if main:
            report = stats.report() if not cfg.lazy_tokenize else \
                f"{stats.read()}{stats.drops()} (encoded lazily, batch by batch)"
            print(f"[wb] data: {report}".replace("\n", "\n[wb] data: "))
    if main and eval_rows:
        print(f"[wb] data: {len(eval_rows)} validation rows")
    if cfg.packing:
        rows = pack(rows, cfg.max_length)
        if main:
            fill = sum(r["length"] for packed in rows for r in packed) / (len(rows) * cfg.max_length)
            print(f"[wb] data: packed into {len(rows)} rows of up to {cfg.max_length} tokens ({fill:.0%} full)")

    dtype = accel.resolve_dtype(cfg.torch_dtype)
    base_dir = base_dir or _base_weights(cfg, out)
    engine, zero3 = training_engine(cfg, base_dir, dtype)  # noqa: F841 (zero3 must live while the model does)
    model = build_trainable(cfg, tokenizer, base_dir, resume_from, dtype, method.reward_head, _uses_reference(cfg),
                            added)
    if main:
        describe_model(cfg, model, name, dtype)
    args_json = run_args(cfg, _task(cfg), name, base_dir, added)
    if main:
        write_atomic(out / "args.json", args_json)

    collate = collate_padding_free if cfg.padding_free else partial(collate_padded, pad_id=tokenizer.pad_token_id)
    if template.vision is not None:
        collate = ImageCollate(collate, template.image_processing, *template.image_token_ids,
                               video_pad_id=template.video_token_id)
    train_collate = LazyCollate(template, cfg.max_length, cfg.truncation_strategy, collate, cfg.skip_bad_rows) \
        if cfg.streaming or cfg.lazy_tokenize else collate
    settings = LoopSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LoopSettings)})
    objective = method.objective(cfg, model, base_dir, dtype, added) if method.objective else None
    if method.collate is not None:
        train_collate = collate = method.collate(template)
    precompute = getattr(cfg, "precompute_ref_logps", False) and _uses_reference(cfg)
    if precompute and cfg.full and resume_from is not None:
        raise UserError("a resumed full-parameter run no longer holds its reference model; resume it "
                        "without --precompute_ref_logps (the reference is then loaded from the base weights)")
    trainer = Trainer(model, tokenizer, rows, train_collate, settings, args_json, resume_from, eval_rows,
                      eval_collate=collate, objective=objective, engine=engine)
    if precompute:  # before the first update (a resumed LoRA run's reference is its adapter-disabled base)
        _precompute_reference(trainer, rows + eval_rows, cfg.per_device_train_batch_size, main)
    trainer.after_train = evaluate_after
    if template.vision is not None:  # checkpoints carry the image and video processing they were trained with
        trainer.extra_files.update(template.image_processing.saved_files())
    if main and resume_from is not None:
        print(resume_line(resume_from, trainer, cfg))
    result = trainer.train()
    if main and not result.already_finished:
        m = result.metrics
        unit = next(k for k in m if k.startswith("trained_"))
        trained = f"{m[unit]:,} {unit.removeprefix('trained_').replace('tokens', 'trained tokens')}"
        first, final = ("-" if v is None else f"{v:.4f}" for v in (m["first_loss"], m["final_loss"]))
        print(f"[wb] done: {m['steps']} steps, {trained} in {m['train_seconds']}s "
              f"(padding efficiency {m['padding_efficiency']:.0%}); "
              f"loss {first} -> {final}; checkpoint {result.checkpoint}")
    return result


def training_engine(cfg: SFTConfig, base_dir: str, dtype):
    """The engine the trainer runs under (None: DDP, or one process) and, under ZeRO-3, the object that keeps
    transformers building models partitioned (deepspeed.zero.Init) while it is alive: hold it as long as the model."""
    from ..train import engines

    if not (cfg.deepspeed or cfg.fsdp):
        return None, None
    accel.init_process_group_anyway()
    if cfg.fsdp:
        return partial(engines.build_engine, "fsdp", fsdp=engines.fsdp_config(cfg.fsdp), dtype=dtype), None
    import deepspeed

    deepspeed.init_distributed(dist_backend=accel.dist_backend())  # joins the group above: its world size
    text = model_config(base_dir, trust_remote_code=cfg.trust_remote_code).get_text_config()
    config = engines.fill_deepspeed_config(
        engines.deepspeed_config(cfg.deepspeed), micro_batch=cfg.per_device_train_batch_size,
        accumulation=cfg.gradient_accumulation_steps, max_grad_norm=cfg.max_grad_norm, dtype=dtype,
        hidden_size=text.hidden_size, optim=cfg.optim)
    return partial(engines.build_engine, "deepspeed", deepspeed=config), engines.zero3_loading(config)


# options that decide the rows, their order or the update: a resumed run that changes them is not the run it continues
RESUMED_OPTIONS = ("dataset", "seed", "max_length", "truncation_strategy", "packing", "learning_rate",
                   "lr_scheduler_type", "min_lr_rate", "lr_decay_ratio",
                   "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
                   "num_generations", "adapters",  # (a preference run's reference is the adapters it started from)
                   "loss_type", "beta", "label_smoothing", "rpo_alpha", "simpo_gamma", "precompute_ref_logps",
                   "desirable_weight", "undesirable_weight", "center_rewards_coefficient")


def _global_batch(args: dict) -> int | None:
    """Rows (prompts for GRPO) per optimizer step from a run's args.json."""
    try:
        return args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * processes_of(args)
    except (KeyError, TypeError):
        return None


def resume_line(ckpt: Path, trainer, cfg: SFTConfig) -> str:
    if trainer.stopped_early:
        return (f"[wb] {ckpt} ended the run early at step {trainer.step} (--early_stopping_patience: "
                f"{trainer.best_metric} had not improved for {trainer.stale_evals} evaluations): nothing to train; "
                "resume with a larger --early_stopping_patience (or without it) to train further")
    if trainer.step >= trainer.total_steps:
        return (f"[wb] {ckpt} already ran all {trainer.total_steps} planned steps: nothing to train. To train further, "
                f"resume with a higher --max_steps (e.g. --max_steps {2 * trainer.total_steps}) or "
                "--num_train_epochs.")
    line = f"[wb] resuming from {ckpt} (step {trainer.step} of {trainer.total_steps})"
    try:
        saved = read_args(ckpt)
    except UserError:  # a checkpoint without (readable) args.json resumes all the same; the hint says less
        saved = {}
    changed = [f"--{k} {saved[k]} -> {getattr(cfg, k)}" for k in RESUMED_OPTIONS
               if k in saved and hasattr(cfg, k) and saved[k] != getattr(cfg, k)]
    # the rows of a step: per-device batch x accumulation x processes (the same product split otherwise trains the
    # same; another one draws other rows per step)
    before, now = _global_batch(saved), _global_batch({**dataclasses.asdict(cfg), "world_size": accel.world_size()})
    if before is not None and before != now:
        changed.append(f"global batch {before} -> {now} (--per_device_train_batch_size x "
                       "--gradient_accumulation_steps x processes)")
    # a plan that changed with the options, or with swiftlike (an epoch's steps once dropped a last partial one)
    planned = trainer.resumed_plan
    asked = all(saved.get(k) == getattr(cfg, k) for k in ("max_steps", "num_train_epochs"))  # (not asked for more)
    if planned is not None and planned != trainer.total_steps and asked:
        changed.append(f"planned steps {planned} -> {trainer.total_steps}")
    if changed:
        line += "; options changed since it was saved (the run goes on differently): " + ", ".join(changed)
    return line


def training_tokenizer(cfg: SFTConfig, resume_from: Path | None):
    """The run's tokenizer with the new tokens added (--new_special_tokens, after those of the --adapters run):
    (tokenizer, {added token: id})."""
    tokenizer = load_tokenizer(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature)
    earlier = added_tokens(cfg.adapters) if cfg.adapters else {}
    wanted = list(earlier) + [t for t in cfg.new_special_tokens if t not in earlier]
    added, known = add_tokens(tokenizer, wanted, _base_rows(cfg)) if wanted else ({}, {})
    if cfg.adapters and added != earlier:
        more = next((t for t in added if t not in earlier), None)
        raise UserError(f"--adapters {cfg.adapters} trained " + (f"the new tokens {listed(earlier)}" if earlier else
                        "no new tokens") + (f"; adding {more!r} to its adapters is not supported (start new adapters)"
                                           if more else f", whose ids differ with --model {cfg.model}'s tokenizer"))
    saved = added_tokens(str(resume_from)) if resume_from is not None else added
    if saved != added:
        raise UserError(f"{resume_from} was trained with the new tokens {listed(saved) or '(none)'}, this run adds "
                        f"{listed(added) or '(none)'}; resume with the --new_special_tokens it was started with")
    if earlier:  # (the config refused the flag's own tokens)
        cfg.refuse_new_tokens(f"--adapters {cfg.adapters}'s new tokens")
    if accel.is_main_process() and added:
        ids = f"ids {min(added.values())}..{max(added.values())}" if len(added) > 1 else f"id {min(added.values())}"
        what = f"{len(added)} special token{'s' if len(added) > 1 else ''} as {ids} ({listed(added)})"
        print(f"[wb] tokens: the --adapters run's {what}; their trained rows come with the adapters" if earlier else
              f"[wb] tokens: added {what}; {'their' if len(added) > 1 else 'its'} embedding rows start at the mean "
              "of the others and train")
    if accel.is_main_process() and known:
        print(f"[wb] tokens: already in the tokenizer, not added: "
              f"{listed(f'{t} (id {i})' for t, i in known.items())}")
    return tokenizer, added


def run_overrides(cfg: SFTConfig, resume_from: Path | None = None, announce: bool = False) -> dict:
    """The config attributes this run changes on its base model (--rope_scaling: models/rope.py): every load of
    the base applies them, args.json keeps them for later commands. Continued --adapters keep their run's; a resumed
    run must ask for what it was started with. `announce`: say it (or that sequences run past the positions)."""
    from ..models import rope

    # (the model's config is read only where it is needed: every load of the base asks for the overrides)
    config = model_config(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature) \
        if cfg.rope_scaling or announce else None
    asked = rope.overrides(cfg.rope_scaling, config, cfg.sequence_length, cfg.trust_remote_code)
    earlier = config_overrides(cfg.adapters) if cfg.adapters else {}
    if cfg.adapters and cfg.rope_scaling and asked != earlier:
        raise UserError(f"--adapters {cfg.adapters} was trained with {rope.describe(earlier)}, not "
                        f"{rope.describe(asked)}; continue it without --rope_scaling (its own applies), or start new "
                        "adapters")
    chosen = earlier or asked
    saved = config_overrides(str(resume_from)) if resume_from is not None else chosen
    if saved != chosen:
        raise UserError(f"{resume_from} was trained with {rope.describe(saved)}, this run asks for "
                        f"{rope.describe(chosen)}; resume with the --rope_scaling (and, for a factor it derives, the "
                        "sequence length) it was started with")
    if announce and accel.is_main_process():
        if chosen:
            inherited = f", as --adapters {cfg.adapters} trained" if earlier else ""
            print(f"[wb] RoPE: {rope.describe(chosen)}{inherited}")
        if note := rope.past_positions(rope.apply(config, chosen), cfg.sequence_length):
            print(f"[wb] note: {note}", file=sys.stderr)
    return chosen


def _base_rows(cfg: SFTConfig) -> int:
    """The base model's embedding rows, from its config."""
    return model_config(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature).get_text_config().vocab_size


def build_trainable(cfg: SFTConfig, tokenizer, base_dir: str, resume_from: Path | None, dtype, reward: bool = False,
                    reference: bool = False, added: dict | None = None):
    """The model to train: base weights (or a resumed full checkpoint), then LoRA adapters (new, or --adapters;
    `reference` keeps a frozen copy of the latter) or all parameters. `added`: the new tokens, whose rows are made
    (models/tokens.py) and train."""
    full_resume = cfg.full and resume_from is not None
    head_from = None if cfg.full else (resume_from or (cfg.adapters if _is_reward_checkpoint(cfg.adapters) else None))
    model = load_model(str(resume_from) if full_resume else base_dir, dtype, quantize_4bit=cfg.qlora,
                       attn_implementation=training_attention(cfg, base_dir, announce=True),
                       trust_remote_code=cfg.trust_remote_code, overrides=run_overrides(cfg),
                       reward_head=reward, pad_token_id=tokenizer.pad_token_id, announce_head=head_from is None)
    if reward and head_from is not None and accel.is_main_process():
        print(f"[wb] reward head: loaded from {head_from}", file=sys.stderr)
    if added and not full_resume:  # (a full checkpoint holds its grown rows)
        rebuild_rows(model, added.values())
    refuse_rowless_tokens(tokenizer, embedding_rows(model), f"--model {cfg.model}", "give them rows with "
                          "--new_special_tokens and those tokens (the rows start at the mean of the others and train)")
    training_kernels(cfg, model, announce=True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.full:
        model = freeze_vision_parts(model.requires_grad_(True), cfg)
        if resume_from is not None:
            _same_options(cfg, resume_from, VISION_PARTS if vision_parts(model) else (), "--freeze_* flags")
            _same_selection(model, cfg, resume_from)
        model = select_trainable(model, cfg)
        _selection_keeps_what_must_train(model, cfg, added, reward)
        return compiled_layers(cfg, model)
    mutated = lora_init.mutates_base(cfg.init_lora_weights)
    if resume_from is not None:
        _same_options(cfg, resume_from, _lora_options(cfg) + (VISION_PARTS if vision_parts(model) else ()),
                      "LoRA options")
    if mutated:
        lora_init.check_model(model, cfg)
    if cfg.adapters:
        model = _start_from_adapters(model, cfg, reference, reward)
    else:  # (a resumed PiSSA / OLoRA run is not decomposed again: its checkpoint holds the start)
        model = attach_lora(model, cfg, cfg.gradient_checkpointing, "SEQ_CLS" if reward else "CAUSAL_LM",
                            trainable_rows(model, (added or {}).values()),
                            init="default" if mutated and resume_from is not None else None)
    if mutated and resume_from is None:
        model.swiftlike_lora_init = lora_init.initial_adapters(model)  # (checkpoints convert with it)
        if accel.is_main_process():
            print(f"[wb] lora: {cfg.init_lora_weights} start: the adapters hold each weight's principal part, the "
                  f"base the rest; checkpoints are plain LoRA of rank {2 * cfg.lora_rank} on the original base"
                  + (f" (note: --lora_dropout {cfg.lora_dropout} drops part of that principal part while training; "
                     "PiSSA trains with 0)" if cfg.lora_dropout else ""))
    if not zero3(cfg):  # (ZeRO-3 gathers an adapter's weights only when its own module runs: peft's forward)
        compute_in_stream_dtype(model)  # adapters in the stream's dtype, their weights in float32 (models/lora_compute)
    if resume_from is not None and mutated:
        model.swiftlike_lora_init = lora_init.resume(model, resume_from)
    elif resume_from is not None:
        _load_adapter(model, resume_from)
    return compiled_layers(cfg, model)


VISION_PARTS = ("freeze_vit", "freeze_aligner", "freeze_llm")


def _same_options(cfg: SFTConfig, ckpt: Path, keys: tuple, what: str) -> None:
    """A resume keeps the options that decide what trains and how (another would load into other parameters, or
    silently compute another model)."""
    try:
        saved = read_args(str(ckpt))
    except UserError:  # (no args.json: nothing to compare with)
        return
    defaults = {"init_lora_weights": "default"}  # (older checkpoints)
    for key in keys:
        was = saved.get(key, defaults.get(key))
        if was is not None and was != getattr(cfg, key):
            raise UserError(f"{ckpt} was started with --{key} {_flag_value(was)}, this run asks for "
                            f"{_flag_value(getattr(cfg, key))}; resume with the {what} it was started with")


def _lora_options(cfg: SFTConfig) -> tuple:
    """What a LoRA resume keeps: the adapters' shape, scale and start (continued --adapters keep their own,
    whatever the flags say)."""
    return ("init_lora_weights",) + (() if cfg.adapters else ("lora_rank", "lora_alpha", "use_rslora", "use_dora",
                                                               "target_modules"))


def _flag_value(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) \
        else str(value)


def _selection_keeps_what_must_train(model, cfg: SFTConfig, added: dict | None, reward: bool) -> None:
    """--trainable_parameters / --freeze_parameters may not freeze what the run announces it trains: new tokens'
    rows (they would stay at their mean start), a reward model's score layer (a new one is random)."""
    if not (cfg.trainable_parameters or cfg.freeze_parameters):
        return
    output = model.get_output_embeddings()
    rows = [model.get_input_embeddings().weight] + ([output.weight] if output is not None else [])
    if added and not all(w.requires_grad for w in rows):
        raise UserError("--trainable_parameters / --freeze_parameters freeze the embedding rows of the new tokens "
                        f"({', '.join(added)}), which would never learn; let the embedding"
                        f"{' and the output layer' if len(rows) > 1 else ''} train")
    head = [n for n, p in model.named_parameters() if n.split(".")[0] == "score" and not p.requires_grad]
    if reward and head:
        raise UserError("--trainable_parameters / --freeze_parameters freeze the reward model's score layer; let "
                        "it train (add 'score' to --trainable_parameters)")


def _same_selection(model, cfg: SFTConfig, ckpt: Path) -> None:
    """The saved optimizer moments are those of the parameters the checkpoint's run trained, in order: a resume
    that selects others (with as many values) would load them into the wrong parameters. Patterns that select the
    same parameters (reordered, or naming a tied weight by its other name) resume."""
    try:
        saved = read_args(str(ckpt))
    except UserError:  # (no args.json: nothing to compare with)
        return
    then = [list(saved.get(flag) or []) for flag in ("trainable_parameters", "freeze_parameters")]
    if trained_names(model, *then) != trained_names(model, cfg.trainable_parameters, cfg.freeze_parameters):
        shown = " ".join(f"--{flag} {' '.join(p)}" for flag, p in zip(("trainable_parameters", "freeze_parameters"),
                                                                        then) if p) or "every parameter"
        raise UserError(f"{ckpt} trained other parameters ({shown}); resume it with a selection of the same "
                        "parameters (its optimizer state is theirs)")


def compiled_layers(cfg: SFTConfig, model):
    """--torch_compile: the model with its decoder layers compiled (models/compiled.py; said once)."""
    if not cfg.torch_compile:
        return model
    from ..models.compiled import compile_layers

    count = compile_layers(model)
    if accel.is_main_process():
        print(f"[wb] torch_compile: {count} decoder layers compiled (inductor, dynamic shapes); the first steps "
              "include compiling them")
    return model


def zero3(cfg: SFTConfig) -> bool:
    """Whether DeepSpeed partitions the parameters themselves (ZeRO-3)."""
    from ..train.engines import deepspeed_config, zero_stage

    return bool(cfg.deepspeed) and zero_stage(deepspeed_config(cfg.deepspeed)) == 3


def _is_reward_checkpoint(path: str | None) -> bool:
    """A LoRA checkpoint of `wb rm`: its adapter holds the score head (modules_to_save)."""
    return path is not None and (Path(path) / "args.json").is_file() and resolve(adapters=path).task == "rm"


def _start_from_adapters(model, cfg: SFTConfig, reference: bool, reward: bool = False):
    """The adapters of an earlier run, trainable; with `reference` also a frozen copy named "ref". A reward model
    from a language model's adapters (`wb rm --adapters SFT_CHECKPOINT`) takes their LoRA weights and trains its
    new score head beside them."""
    import torch
    from peft import PeftModel

    model = prepare_4bit(model, cfg.gradient_checkpointing)
    if reward and not _is_reward_checkpoint(cfg.adapters):
        return _reward_from_lm_adapters(model, cfg)
    try:
        with intact(cfg.adapters):
            model = PeftModel.from_pretrained(model, cfg.adapters, is_trainable=True)
        if reference:
            model.load_adapter(cfg.adapters, adapter_name="ref", is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"--adapters {cfg.adapters} does not fit {cfg.model}: {str(e).splitlines()[0]}") from None
    model.set_adapter("default")
    for name, module in model.named_modules():  # --lora_dropout applies (GRPO wants 0: sampling == training)
        if ".lora_dropout." in name and isinstance(module, torch.nn.Dropout):
            module.p = cfg.lora_dropout
    return model


def _reward_from_lm_adapters(model, cfg: SFTConfig):
    """A sequence-classification model with a language model's LoRA adapters (their shape and weights) and a
    trainable score head (saved with them: modules_to_save)."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    config = PeftConfig.from_pretrained(cfg.adapters)
    config.task_type, config.modules_to_save, config.inference_mode = "SEQ_CLS", ["score"], False
    config.lora_dropout = cfg.lora_dropout
    weights = load_peft_weights(cfg.adapters)
    if getattr(config, "trainable_token_indices", None):  # new tokens: the embedding's rows (the LM's output layer,
        names = {name for name, _ in model.named_modules()}  # which a reward model lacks, left out)
        gone = [k for k in config.trainable_token_indices if k not in names]
        config.trainable_token_indices = {k: v for k, v in config.trainable_token_indices.items() if k not in gone}
        weights = {k: v for k, v in weights.items() if not any(f".{g}." in f".{k}" for g in gone)}
    head = {f"base_model.model.score.{k}": v.clone() for k, v in model.score.state_dict().items()}  # (new)
    model = get_peft_model(model, config)
    loaded = set_peft_model_state_dict(model, {**weights, **head})
    if loaded.unexpected_keys:
        raise UserError(f"--adapters {cfg.adapters} does not fit {cfg.model}: {loaded.unexpected_keys[0]} has no "
                        "place in it")
    return model


def describe_model(cfg: SFTConfig, model, template_name: str, dtype) -> None:
    from ..train.engines import numel

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    print(f"[wb] model: {cfg.model}{' (miniature)' if cfg.miniature else ''}, {cfg.train_type}, "
          f"template {template_name}, {accel.device_type()} {str(dtype).replace('torch.', '')}, "
          f"trainable {trainable:,} / {total:,} parameters"
          + (f"; engine deepspeed {cfg.deepspeed}" if cfg.deepspeed else f"; engine fsdp {cfg.fsdp}" if cfg.fsdp
             else f"; {accel.world_size()} processes (DDP)" if accel.world_size() > 1 else ""))
    if getattr(cfg, "learning_rate_note", None):
        print(f"[wb] {cfg.learning_rate_note}")


def run_args(cfg: SFTConfig, task: str, template_name: str, base_dir: str, added: dict | None = None) -> str:
    """args.json: every option plus what later commands (infer, export) need to rebuild the model (`added_tokens`:
    the new tokens' ids, whose rows they rebuild before loading adapters; `config_overrides`: what the run changed
    in the base's config)."""
    args = {**dataclasses.asdict(cfg), "task": task, "train_type": cfg.train_type, "template": template_name,
            "base_model_dir": str(Path(base_dir).resolve()), "added_tokens": added or {},
            "config_overrides": run_overrides(cfg),
            "world_size": accel.world_size(),
            "swiftlike_version": __version__}
    for hidden in getattr(cfg, "NOT_OPTIONS", ()):
        args.pop(hidden, None)
    args["reward_funcs"] = [f if isinstance(f, str) else getattr(f, "__name__", repr(f))
                            for f in args.get("reward_funcs", [])]
    return json.dumps(args, indent=2, ensure_ascii=False) + "\n"


def frozen_reference(cfg: SFTConfig, base_dir: str, dtype, added: dict | None = None):
    """A full-parameter run's reference: the base weights, frozen (the policy moves away from them), with the new
    tokens' starting rows."""
    reference = load_model(base_dir, dtype, attn_implementation=training_attention(cfg, base_dir),
                           trust_remote_code=cfg.trust_remote_code, overrides=run_overrides(cfg))
    if added:
        rebuild_rows(reference, added.values())
    training_kernels(cfg, reference)
    return reference.eval().requires_grad_(False)


def training_attention(cfg: SFTConfig, base_dir: str, announce: bool = False) -> str | None:
    """The attention implementation of a training run's models (models/attention.py chooses; printed once)."""
    from ..models import attention

    impl, why = attention.choose(cfg.attn_implementation, accel.device_type(), cfg.padding_free,
                                 model_config(base_dir, trust_remote_code=cfg.trust_remote_code),
                                 accel.resolve_dtype(cfg.torch_dtype))
    if announce and accel.is_main_process():
        print(f"[wb] attention: {impl or 'sdpa'} ({why})")
    return impl


def training_kernels(cfg: SFTConfig, model, announce: bool = False) -> None:
    """Liger's fused kernels on a training run's loaded model where models/kernels.py chooses them (said once)."""
    from ..models import kernels

    model_type = model.config.model_type
    use, why = kernels.choose(cfg.use_liger_kernel, accel.device_type(), model_type, cfg.torch_compile)
    failed = kernels.apply(model) if use else None
    if failed and cfg.use_liger_kernel:
        raise UserError(f"--use_liger_kernel: liger-kernel cannot patch {model_type} ({failed}); drop the flag")
    if failed:
        use, why = False, f"liger-kernel cannot patch {model_type}: {failed}"
    if announce and why and accel.is_main_process():
        print(f"[wb] kernels: {'liger (RMSNorm, SwiGLU, RoPE)' if use else 'transformers own'} ({why})")


def _uses_reference(cfg) -> bool:
    """DPO (but not its reference-free variants) and KTO compare the policy with a reference."""
    return _task(cfg) == "kto" or (_task(cfg) == "dpo" and cfg.loss_type not in REFERENCE_FREE)


def _preference_objective(cfg, model, base_dir: str, dtype, added: dict):
    """DPO/KTO objective; a full-parameter run with a reference-based loss keeps a frozen reference loaded from
    the base weights (also when resuming, where the policy has already moved)."""
    from ..train.dpo import KTOObjective, PreferenceObjective

    loss_type = getattr(cfg, "loss_type", "kto")
    ref = None
    if cfg.full and _uses_reference(cfg) and not getattr(cfg, "precompute_ref_logps", False):
        ref = frozen_reference(cfg, base_dir, dtype, added)
    balance = router_aux_coef(cfg, model)
    if loss_type == "kto":
        return KTOObjective(model, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, ref, balance)
    return PreferenceObjective(model, cfg.loss_type, cfg.beta, cfg.label_smoothing, cfg.simpo_gamma, cfg.rpo_alpha,
                               ref, balance)


def _precompute_reference(trainer: Trainer, pairs: list[dict], batch_size: int, main: bool) -> None:
    """Store the reference log-probs on every pair (the policy before its first update is the reference); every
    rank computes all of them (under a sharded engine each forward is a collective)."""
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", disable=not main):
        chunk = pairs[start:start + batch_size]
        batch = {k: v.to(trainer.device) for k, v in trainer.collate(chunk).items()}
        ref = trainer.engine.call("precompute", batch).tolist()
        for i, pair in enumerate(chunk):
            pair["ref"] = (ref[i], ref[len(chunk) + i])


def _load_adapter(model, ckpt: Path) -> None:
    from safetensors.torch import load_file

    weights = ckpt / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{ckpt}: no adapter_model.safetensors to resume a LoRA run from")
    with intact(ckpt):
        lora_init.load_adapter_weights(model, load_file(str(weights)), ckpt)


def _lm_objective(cfg, model, base_dir, dtype, added):  # noqa: ARG001 (the objectives' signature)
    from ..train.loss import CausalLMLoss

    return CausalLMLoss(model, neftune_alpha=cfg.neftune_noise_alpha, router_aux_coef=router_aux_coef(cfg, model))


def router_aux_coef(cfg, model) -> float:
    """The run's MoE load-balancing weight (train/moe_balance.py), said at start-up for an MoE model."""
    from ..train import moe_balance

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    coefficient = moe_balance.router_aux_coefficient(cfg.router_aux_loss_coef, lm, cfg.model)
    line = moe_balance.describe(coefficient, lm)
    if line and accel.is_main_process():
        print(f"[wb] {line}")
    return coefficient


METHODS = {
    "sft": Method("sft", objective=_lm_objective),
    "pt": Method("pt", objective=_lm_objective),
    "dpo": Method("preference", pairwise=True, objective=_preference_objective, collate=_pairs_collate),
    "kto": Method("kto", pairwise=True, objective=_preference_objective, collate=_kto_collate),
    "rm": Method("preference", pairwise=True, reward_head=True, objective=_reward_objective, collate=_pairs_collate),
}
