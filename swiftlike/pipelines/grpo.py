"""`wb grpo`: sample completions of prompts, score them with reward functions, and train on group-relative
advantages (GRPO and its variants), with LoRA, QLoRA or full parameters."""
from __future__ import annotations

import dataclasses

from .. import accel
from ..config import GRPOConfig
from ..data.dataset import DataStats, hold_out, load_rows
from ..errors import UserError
from ..models import load_tokenizer
from ..models.loader import padding_id
from ..rewards import RewardContext, resolve, wrap
from ..rollout import Sampling
from ..templates import get_template
from ..train.checkpoint import write_atomic
from ..train.grpo import GRPOObjective
from ..train.grpo_trainer import GRPOTrainer, RolloutSettings
from ..train.trainer import LoopSettings, TrainResult
from .eval import after_training
from .sft import (_base_weights, build_trainable, cleans_up_on_failure, describe_model, frozen_reference,
                  resolve_template_name, resume_line, run_args, start_run, training_engine)


def encode_prompts(rows: list[dict], template, max_prompt_length: int, stats: DataStats,
                   enable_thinking: bool | None = None) -> list[dict]:
    """Each row with its prompt ids (the conversation plus the generation prompt); longer prompts dropped and
    counted."""
    opts = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    out = []
    for row in rows:
        ids = template.encode_prompt(row["messages"], row.get("tools"), **opts)
        if len(ids) > max_prompt_length:
            stats.dropped[f"prompt longer than --max_prompt_length {max_prompt_length}"] += 1
            continue
        out.append({**row, "prompt_ids": ids})
    return out


def _prompts(cfg: GRPOConfig, specs: list, template, stats: DataStats) -> list[dict]:
    rows = load_rows(specs, None, cfg.skip_bad_rows, stats, cfg.seed, "grpo", cfg.columns, cfg.data_names())
    return encode_prompts(rows, template, cfg.max_prompt_length, stats, cfg.enable_thinking)


def make_rollout(cfg: GRPOConfig, model, tokenizer, base_dir: str):
    """The generation backend the options ask for."""
    if not cfg.use_vllm:
        from ..rollout.hf import HFRollout

        from ..train.engines import deepspeed_config, zero_stage

        # sharded weights (FSDP, ZeRO-3): every forward gathers from every rank, so all run as many
        sharded = bool(cfg.fsdp) or (bool(cfg.deepspeed) and zero_stage(deepspeed_config(cfg.deepspeed)) == 3)
        return HFRollout(model, padding_id(tokenizer), cfg.generation_batch_size, synced=sharded)
    if cfg.vllm_mode == "server":
        from ..rollout.client import ServerRollout

        return ServerRollout(f"http://{cfg.vllm_server_host}:{cfg.vllm_server_port}")
    if accel.device_type() != "cuda":
        raise UserError("--use_vllm with --vllm_mode colocate needs a CUDA GPU; use the default transformers "
                        "backend here, or a `wb rollout` server on a GPU machine (--vllm_mode server)")
    from ..rollout.vllm_engine import VLLMRollout

    return VLLMRollout(base_dir, cfg.torch_dtype, cfg.vllm_gpu_memory_utilization,
                       cfg.vllm_max_model_len or cfg.max_prompt_length + cfg.max_completion_length,
                       seed=cfg.seed, distributed=accel.world_size() > 1)


def reward_functions(cfg: GRPOConfig, template) -> list:
    ctx = RewardContext(template=template, max_completion_length=cfg.max_completion_length,
                        format_pattern=cfg.format_pattern, soft_cache_length=cfg.soft_cache_length,
                        cosine_max_len=cfg.cosine_max_len, repetition_ngram=cfg.repetition_ngram,
                        repetition_max_penalty=cfg.repetition_max_penalty)
    rewards = resolve(cfg.reward_funcs, ctx)
    if cfg.reward_model:
        from ..rewards.model import RewardModelReward

        rewards.append(wrap("reward_model", RewardModelReward(cfg.reward_model)))
    return rewards


@cleans_up_on_failure
def run_grpo(cfg: GRPOConfig) -> TrainResult:
    if cfg.dry_run:  # the memory plan only (a MemoryPlan): nothing loaded or written
        from .dry_run import dry_run

        return dry_run(cfg, "grpo")
    main, out, resume_from = start_run(cfg)
    evaluate_after = after_training(cfg)  # its datasets checked before any training

    tokenizer = load_tokenizer(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature)
    template_name = resolve_template_name(cfg, tokenizer)
    template = get_template(template_name, tokenizer)
    stop_ids = tuple(template.stop_token_ids) or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None
                                                  else ())
    if not stop_ids:
        raise UserError(f"template {template_name} names no stop token and the tokenizer has no eos token")
    rewards = reward_functions(cfg, template)

    stats = DataStats()
    prompts = _prompts(cfg, cfg.dataset, template, stats)
    if not prompts:
        raise UserError("no prompts left to train on" + stats.drops("; "))
    eval_prompts = _prompts(cfg, cfg.val_dataset, template, DataStats()) if cfg.val_dataset else []
    if cfg.split_ratio > 0 and not cfg.val_dataset:
        prompts, eval_prompts = hold_out(prompts, cfg.split_ratio, cfg.seed, "prompts")
    if main:
        held = f", {len(eval_prompts)} for validation" if eval_prompts else ""
        print(f"[wb] data: {len(prompts)} prompts{stats.drops()}{held}; {cfg.prompts_per_step * accel.world_size()} "
              f"prompts x {cfg.num_generations} completions per generation batch")

    dtype = accel.resolve_dtype(cfg.torch_dtype)
    base_dir = _base_weights(cfg, tokenizer, out)
    engine, zero3 = training_engine(cfg, base_dir, dtype)  # noqa: F841 (zero3 must live while the model does)
    model = build_trainable(cfg, tokenizer, base_dir, resume_from, dtype, reference=cfg.beta != 0.0)
    if main:
        describe_model(cfg, model, template_name, dtype)
    args_json = run_args(cfg, "grpo", template_name, base_dir)
    if main:
        write_atomic(out / "args.json", args_json)

    # LoRA's reference is the adapter-disabled model (or the --adapters copy); a full run's a frozen copy
    ref = frozen_reference(cfg, base_dir, dtype) if cfg.full and cfg.beta != 0.0 else None
    objective = GRPOObjective(model, cfg.loss_type, cfg.epsilon, cfg.epsilon_high, cfg.beta,
                              cfg.importance_sampling_level, cfg.max_completion_length, ref)
    sampling = Sampling(max_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                        top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty, stop_token_ids=stop_ids)
    rs = RolloutSettings(cfg.num_generations, cfg.num_iterations, sampling, cfg.scale_rewards, cfg.reward_weights,
                         cfg.mask_truncated_completions, cfg.log_completions, cfg.eval_temperature)
    settings = LoopSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LoopSettings)})
    rollout = make_rollout(cfg, model, tokenizer, base_dir)
    if main:
        print(f"[wb] grpo: {cfg.loss_type} loss, generation with {rollout.name}, rewards "
              f"{', '.join(r.name for r in rewards)}; beta {cfg.beta}, {cfg.num_iterations} iteration(s) per batch")
    trainer = GRPOTrainer(model, tokenizer, prompts, settings, args_json, resume_from, objective=objective,
                          rollout=rollout, rewards=rewards, rs=rs, eval_prompts=eval_prompts, engine=engine)
    trainer.after_train = evaluate_after
    if main and resume_from is not None:
        print(resume_line(resume_from, trainer))
    result = trainer.train()
    if main and not result.already_finished:
        logged = [h for h in result.log_history if "reward" in h]
        trend = f"; reward {logged[0]['reward']:.3f} -> {logged[-1]['reward']:.3f}" if logged else ""
        print(f"[wb] done: {result.metrics['steps']} steps in {result.metrics['train_seconds']}s{trend}; "
              f"checkpoint {result.checkpoint}")
    return result
