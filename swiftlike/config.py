"""One dataclass per command. Flags, YAML recipes and Python keyword arguments all land here.

Field names follow Hugging Face `TrainingArguments` where one exists so users' habits carry over.
Every field carries its help text in `metadata["help"]`; the CLI is generated from these classes.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import UserError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


USE_VLLM_ROPE = ("--rope_scaling with --use_vllm: vLLM would generate with the base's own RoPE; use the transformers "
                 "backend (drop --use_vllm)")
LR_DECAY_RATIO = 0.1  # warmup_stable_decay's default decaying share of the steps
TORCH_DTYPES = ("auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32")  # (accel.resolve_dtype's names)


@dataclass
class ModelArgs:
    model: str = _f("", "Hub id (Qwen/Qwen3-8B), local directory, or a checkpoint directory.")
    hub: str = _f("huggingface", "Where hub ids are downloaded from: huggingface or modelscope.",
                  choices=("huggingface", "modelscope"))
    miniature: bool = _f(False, "Build a randomly initialised 2-layer, narrow model of the same architecture and "
                                "template, with the family's own tokenizer or a labelled stand-in vocabulary "
                                "(offline, seconds), to try a pipeline before renting GPUs.")
    template: str | None = _f(None, "Template name override (default: the registry's template for --model).")
    torch_dtype: str = _f("auto", "auto (bf16 where supported, else fp32), bfloat16, float16 or float32.",
                          choices=TORCH_DTYPES)
    attn_implementation: str | None = _f(None, "sdpa, eager, flash_attention_2 or wb_varlen (padding-free rows "
                                               "without a mask; default: chosen per device and batching, printed at "
                                               "start-up, docs/architecture.md).")
    trust_remote_code: bool = _f(False, "Allow model repositories to run their own Python code (off by default).")
    debug: bool = _f(False, "Show full tracebacks instead of one-line errors.")


@dataclass
class DataArgs:
    dataset: list = _f([], "Data: .jsonl/.json/.csv/.parquet files, folders, hf::org/name[:subset][:split] / "
                           "ms::org/name, or a named dataset (`wb datasets`); append #N to take N rows (seeded); "
                           "repeat to mix.")
    columns: dict | None = _f(None, "Rename source columns before format detection, as JSON: "
                                    "'{\"question\": \"query\", \"answer\": \"response\"}'.")
    model_name: str | None = _f(None, "Fills {{name}} in datasets that name the model (e.g. identity).")
    model_author: str | None = _f(None, "Fills {{author}} in datasets that name the model's author.")

    def data_names(self) -> dict:
        return {"name": self.model_name, "author": self.model_author}


def default_learning_rate(full: bool, miniature: bool) -> float:
    """1e-4 for LoRA/QLoRA, 1e-5 for full; a random miniature (tiny and untrained) needs 100x to learn visibly."""
    return (1e-5 if full else 1e-4) * (100 if miniature else 1)


EVAL_METRICS = ("math", "choice", "exact_match", "f1", "rouge", "perplexity")


@dataclass
class SFTConfig(ModelArgs, DataArgs):
    max_length: int = _f(2048, "Longest encoded sequence in tokens (see --truncation_strategy).")
    truncation_strategy: str = _f("drop", "Rows longer than --max_length: drop (counted in the report), keep the "
                                          "left / right part, or split into consecutive pieces (the default of "
                                          "wb pt).", choices=("drop", "left", "right", "split"))
    rope_scaling: str | None = _f(None, "Stretch the model's RoPE to train sequences longer than its positions: "
                                        "linear or yarn (factor ceil(the longest sequence / the model's positions); "
                                        "wb grpo: prompt plus completion length), or a "
                                        "JSON object such as '{\"rope_type\": \"yarn\", \"factor\": 4, "
                                        "\"original_max_position_embeddings\": 32768}'. Kept with the run: infer, "
                                        "deploy, eval and export rebuild it (docs/cli.md#long-sequences).")
    dataset_num_proc: int = _f(1, "Processes that encode the data in parallel.")
    dataset_cache: bool = _f(True, "Reuse encoded data from an earlier run with identical inputs (data bytes, "
                                   "template, tokenizer, encoding options); false re-encodes.")
    cache_dir: str | None = _f(None, "Where encoded data is cached (default: $WB_CACHE_DIR or ~/.cache/swiftlike).")
    lazy_tokenize: bool = _f(False, "Encode each micro-batch when it is drawn instead of the whole dataset first.")
    streaming: bool = _f(False, "Read the data as training goes (huge or hub datasets): a seeded shuffle buffer, "
                                "encoding per batch; needs --max_steps.")
    skip_bad_rows: bool = _f(False, "Count and skip rows (and .jsonl lines) that are malformed or that the "
                                    "template rejects instead of stopping with an error.")
    loss_scope: str = _f("assistant", "Which tokens are trained: assistant (every assistant turn), "
                                      "last_assistant, or all.", choices=("assistant", "last_assistant", "all"))
    padding_free: bool = _f(True, "Concatenate each batch into one row without padding (sequence-aware attention).")
    neftune_noise_alpha: float | None = _f(None, "NEFTune: uniform noise on the input embeddings while training, "
                                                 "alpha / sqrt(L x hidden) for a sequence of L tokens (5 in the "
                                                 "paper); never at evaluation or inference.")
    router_aux_loss_coef: float | None = _f(None, "Mixture-of-experts models: weight of the router's load-"
                                                  "balancing loss added to the training loss (Qwen3's and Mixtral's "
                                                  "configs say 0.001 and 0.02); default: what the model's config "
                                                  "asks (none unless it sets output_router_logits); 0 turns it off.")
    packing: bool = _f(False, "Bin sequences into rows of up to --max_length tokens (best-fit decreasing); each "
                              "micro-batch takes --per_device_train_batch_size such rows.")
    val_dataset: list = _f([], "Validation data (same forms as --dataset); its loss is logged as eval_loss.")
    split_ratio: float = _f(0.0, "Fraction of the training rows held out (seeded) for validation.")
    eval_steps: int | None = _f(None, "Evaluate every N optimizer steps (default: at every save and at the end).")
    early_stopping_patience: int | None = _f(None, "Stop when the validation metric (eval_loss; wb grpo: "
                                                   "eval_reward) has not improved for this many evaluations in a row "
                                                   "(saving a checkpoint there); the best checkpoint is named at the "
                                                   "end and kept by --save_total_limit either way.")
    eval_after_train: bool = _f(False, "After training, score the final checkpoint and the base model the same way "
                                       "on --eval_dataset (`wb eval`), print both with the difference, and write "
                                       "them to <output_dir>/eval and the tracker.")
    eval_dataset: list = _f([], "--eval_after_train data: named (gsm8k-test, mcq-demo) or files with reference "
                                "answers; #N takes N rows.")
    eval_limit: int | None = _f(None, "--eval_after_train: the first N rows of each --eval_dataset.")
    eval_metric: str | None = _f(None, "--eval_after_train metric (default: the named dataset's).",
                                 choices=EVAL_METRICS)
    eval_max_new_tokens: int = _f(512, "--eval_after_train: longest answer in tokens.")
    # training mode
    lora: bool = _f(False, "Train LoRA adapters (the default mode).")
    qlora: bool = _f(False, "Train LoRA adapters on a 4-bit NF4 base (bitsandbytes).")
    full: bool = _f(False, "Train all parameters.")
    trainable_parameters: list = _f([], "--full: only the parameters whose names match one of these regular "
                                        "expressions (re.search) train, e.g. 'layers\\.(2[4-7])\\.' 'model\\.norm' "
                                        "(the last 4 of 28 layers and the final norm). Not for vision-language "
                                        "models (their --freeze_* flags choose the parts).")
    freeze_parameters: list = _f([], "--full: the parameters whose names match one of these regular expressions "
                                     "do not train, e.g. 'embed_tokens' 'layers\\.[0-9]\\.' (the first 10 layers).")
    lora_rank: int = _f(8, "LoRA rank r.")
    lora_alpha: int = _f(32, "LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with --use_rslora).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    target_modules: list = _f(["all-linear"], "Modules that get adapters: all-linear, or names such as q_proj v_proj.")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA).")
    adapters: str | None = _f(None, "Start from this LoRA checkpoint (e.g. a `wb sft` one) on the --model base and "
                                    "train its adapters further (their rank and targets win over the LoRA flags, "
                                    "--lora_dropout applies); "
                                    "DPO, KTO and GRPO with --beta use it, frozen, as the reference.")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling.")
    init_lora_weights: str = _f("default", "How new adapters start: default (A random, B zero), gaussian, pissa (the "
                                           "weight's top singular vectors, taken out of the base), pissa_niter_N (by "
                                           "a randomized SVD of N iterations: fast), or olora (QR). PiSSA/OLoRA "
                                           "checkpoints are plain LoRA of twice the rank on the original base "
                                           "(docs/cli.md#lora-initialisation).")
    lora_plus_ratio: float | None = _f(None, "LoRA+: each adapter's B matrix learns at this many times --learning_rate "
                                             "(16 in the LoRA+ paper), A and everything else at --learning_rate.")
    new_special_tokens: list = _f([], "Tokens to add to the tokenizer as special tokens (never split), or .txt files "
                                      "with one token a line; their embedding rows start at the mean of the others "
                                      "and train (with LoRA only those rows: PEFT's trainable tokens).")
    # vision-language models (docs/multimodal.md)
    max_pixels: int | None = _f(None, "Images are resized to at most this many pixels (default: the model's "
                                      "processor, e.g. 12845056 for Qwen2.5-VL); fewer pixels, fewer image tokens.")
    min_pixels: int | None = _f(None, "Images are resized to at least this many pixels (default: the model's).")
    video_fps: float | None = _f(None, "Videos: frames read per second of a video file, and the rate a list of "
                                       "frames is taken to have (default: the model's video processor, 2).")
    video_max_pixels: int | None = _f(None, "Videos: the video processor's upper pixel bound (Qwen2.5-VL: per "
                                            "frame; Qwen3-VL: all frames together; default: the model's).")
    freeze_vit: bool = _f(True, "Keep the vision encoder frozen (no LoRA on it, no gradient under --full).")
    freeze_aligner: bool = _f(True, "Keep the vision-to-language projection (the merger) frozen.")
    freeze_llm: bool = _f(False, "Keep the language model frozen (train the vision side only).")
    vit_lr: float | None = _f(None, "Learning rate of the vision encoder when it trains (--freeze_vit false); "
                                    "default --learning_rate. The schedule applies to it alike.")
    aligner_lr: float | None = _f(None, "Learning rate of the merger when it trains (--freeze_aligner false); "
                                        "default --learning_rate.")
    # optimisation (Hugging Face TrainingArguments names)
    output_dir: str = _f("", "Where checkpoints go (default: output/<model>-<timestamp>).")
    learning_rate: float | None = _f(None, "Peak learning rate (default 1e-4 for LoRA/QLoRA, 1e-5 for full; with "
                                           "--miniature 1e-2 and 1e-3, where a random miniature visibly learns).")
    num_train_epochs: float = _f(1.0, "Passes over the data (ignored when --max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps to run; overrides --num_train_epochs when > 0.")
    per_device_train_batch_size: int = _f(4, "Sequences per device per micro-batch.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule after the warm-up: cosine (to 0), linear (to 0), "
                                          "constant, constant_with_warmup, cosine_with_min_lr (cosine to "
                                          "--min_lr_rate x the peak), warmup_stable_decay (the peak, then a cosine "
                                          "to --min_lr_rate x the peak over the last --lr_decay_ratio of the steps).",
                                choices=("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr",
                                         "warmup_stable_decay"))
    min_lr_rate: float | None = _f(None, "cosine_with_min_lr and warmup_stable_decay: the last learning rate as a "
                                         "fraction of --learning_rate (default 0.1 and 0).")
    lr_decay_ratio: float = _f(LR_DECAY_RATIO, "warmup_stable_decay: the fraction of the steps, at the end, that "
                                                "decay.")
    warmup_ratio: float = _f(0.0, "Fraction of steps spent warming up the learning rate.")
    warmup_steps: int = _f(0, "Warm-up steps (overrides --warmup_ratio when > 0).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    optim: str = _f("adamw", "Optimizer: adamw (torch's; bf16 weights round stochastically), adamw_8bit / adamw_4bit "
                             "(torchao: the moments block-quantized to 2 / 1 bytes a parameter instead of 8; bf16 "
                             "weights round stochastically), paged_adamw_8bit / paged_adamw_32bit (bitsandbytes: "
                             "the moments in CUDA memory that pages to the host under pressure, as in QLoRA "
                             "recipes; not for bf16 --full). transformers' names are read too: adamw_torch, "
                             "adamw_torch_fused (adamw), adamw_bnb_8bit, adamw_torch_8bit (adamw_8bit), "
                             "adamw_torch_4bit (adamw_4bit).",
                    choices=("adamw", "adamw_8bit", "adamw_4bit", "paged_adamw_8bit", "paged_adamw_32bit"),
                    aliases={"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_bnb_8bit": "adamw_8bit",
                             "adamw_torch_8bit": "adamw_8bit", "adamw_torch_4bit": "adamw_4bit"})
    adam_beta1: float = _f(0.9, "AdamW beta1 (the first moment's decay).")
    adam_beta2: float = _f(0.999, "AdamW beta2 (the second moment's decay; 0.95 is common for large models).")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    use_liger_kernel: bool | None = _f(None, "Liger Kernel's fused RMSNorm, SwiGLU and RoPE (Triton, CUDA): on by "
                                              "default for training on CUDA when liger-kernel is installed (pip "
                                              "install 'swiftlike[cuda]') and covers the model; false turns them "
                                              "off, true requires them.")
    torch_compile: bool = _f(False, "Compile each decoder layer with torch.compile (inductor, dynamic shapes): "
                                    "fused kernels for a launch-bound step (on an H100, Qwen3-0.6B LoRA trains "
                                    "1.4x faster); the first step pays the compilation. Liger's kernels default "
                                    "off with it. Works with --fsdp and DeepSpeed ZeRO-1/2 (not ZeRO-3).")
    seed: int = _f(42, "Seed for initialisation, data order, dropout and bf16 stochastic rounding.")
    logging_steps: int = _f(10, "Log every N optimizer steps.")
    save_steps: int = _f(500, "Save a checkpoint every N optimizer steps (and always at the end).")
    save_total_limit: int | None = _f(None, "Keep at most this many checkpoints (oldest deleted).")
    resume: bool = _f(False, "Continue from the latest checkpoint in --output_dir.")
    overwrite_output_dir: bool = _f(False, "Start afresh in an --output_dir that already holds checkpoints, or "
                                           "continue an earlier one there (--resume_from_checkpoint): the "
                                           "checkpoints past this run's step go at its first save.")
    resume_from_checkpoint: str | None = _f(None, "Continue from this checkpoint directory.")
    save_on_interrupt: bool = _f(True, "On Ctrl-C, finish the current step and save a checkpoint (atomically) "
                                       "before stopping; a second Ctrl-C stops at once.")
    report_to: str = _f("none", "Experiment tracker: tensorboard, wandb, swanlab or none.",
                        choices=("tensorboard", "wandb", "swanlab", "none"))
    nproc_per_node: int = _f(1, "Processes on this machine; >1 relaunches under torchrun (or set NPROC_PER_NODE).")
    # engines and multi-node launch (docs/distributed.md)
    deepspeed: str | None = _f(None, "Train under DeepSpeed: zero1, zero2, zero3, zero2_offload, zero3_offload "
                                     "(presets shipped in swiftlike/assets/configs/) or a DeepSpeed JSON file; every "
                                     "\"auto\" is filled from this run's options.")
    fsdp: str | None = _f(None, "Train under PyTorch FSDP2 (fully_shard per decoder layer): full_shard, "
                                "hybrid_shard (shard within a node, replicate across nodes), full_shard_offload "
                                "(parameters and optimizer states in CPU memory) or a JSON file with sharding, "
                                "reshard_after_forward, cpu_offload.")
    nnodes: int = _f(1, "Machines in the run (or NNODES); with --nproc_per_node each relaunches under torchrun.")
    node_rank: int = _f(0, "This machine's index, 0..nnodes-1 (or NODE_RANK).")
    master_addr: str = _f("127.0.0.1", "Address of node 0, reachable from every node (or MASTER_ADDR).")
    master_port: int | None = _f(None, "Port on node 0 (or MASTER_PORT; default: a free port when --nnodes 1, "
                                       "29500 otherwise).")
    # memory planning: --dry_run estimates, from the model's config alone (docs/distributed.md)
    dry_run: bool = _f(False, "Print the estimated per-device memory of this run (weights, gradients, optimizer "
                              "states, activations, peak) from the model's config alone and stop: no weights, data "
                              "or output directory; registered models need no network.")
    gpu_memory: str | None = _f(None, "--dry_run: the card to check the estimate against, as it is sold: 80GB, "
                                      "24GB (GB and GiB are both 2^30 bytes, as a card's memory is; a bare number "
                                      "is GiB).")
    plan_zero: str = _f("none", "--dry_run: plan with this ZeRO stage (zero1: optimizer states sharded, zero2: and "
                                "gradients, zero3: and weights); default: the stage of --deepspeed. --fsdp plans "
                                "FSDP2's own accounting (all three sharded, in the weights' dtype).",
                        choices=("none", "zero1", "zero2", "zero3"))
    plan_devices: int | None = _f(None, "--dry_run: ranks that share the model states under --plan_zero, or run "
                                        "data-parallel (default: --nproc_per_node).")

    @property
    def train_type(self) -> str:
        return "qlora" if self.qlora else "full" if self.full else "lora"

    @property
    def sequence_length(self) -> int:
        """The longest sequence the run trains on."""
        return self.max_length

    def _check_plan_options(self) -> None:
        planning = [n for n in ("gpu_memory", "plan_devices") if getattr(self, n) is not None]
        planning += ["plan_zero"] if self.plan_zero != "none" else []
        if planning and not self.dry_run:
            raise UserError(f"--{planning[0]} only shapes the --dry_run estimate; add --dry_run")
        if self.gpu_memory is not None:
            from .train.memory_plan import parse_size

            if parse_size(self.gpu_memory) is None:
                raise UserError(f"--gpu_memory {self.gpu_memory!r}: expected a size such as 80GB or 24GiB")
        if self.plan_devices is not None and self.plan_devices < 1:
            raise UserError(f"--plan_devices must be at least 1, got {self.plan_devices}")

    def _check_engine_options(self) -> None:
        from .train import engines

        if self.deepspeed and self.fsdp:
            raise UserError("--deepspeed and --fsdp are two engines; choose one")
        if self.deepspeed and not self.dry_run:
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise UserError("--deepspeed needs DeepSpeed: pip install 'swiftlike[deepspeed]' (or use --fsdp, "
                                "which needs nothing more than torch)")
        if self.deepspeed:
            ds = engines.deepspeed_config(self.deepspeed)
            stage = engines.zero_stage(ds)
            if self.qlora and stage == 3:
                raise UserError("--qlora under ZeRO-3 is not supported: 4-bit weights cannot be partitioned by "
                                "ZeRO-3 here; use --deepspeed zero2 (or zero1), or --lora")
            if self.optim == "adamw_4bit":  # (torchao's blocks; bitsandbytes has no 4-bit AdamW)
                raise UserError("--optim adamw_4bit under --deepspeed is not supported: ZeRO's flat partitions are "
                                "not whole blocks of its 4-bit moments; use --optim adamw_8bit (bitsandbytes' there)")
            if engines.offloads_optimizer(ds) and self.optim != "adamw":
                raise UserError(f"--optim {self.optim} with --deepspeed {self.deepspeed}: offloaded optimizer states "
                                "step with DeepSpeed's CPU Adam (fp32 moments in host memory); use --optim adamw, "
                                "or a preset without offload")
            if self.torch_compile and stage == 3:
                # its hooks gather each layer's weights inside the layer's call: torch.compile breaks the layer
                # graph at each and, past its recompile limit (hit in the first step on a miniature), runs them eagerly
                raise UserError("--torch_compile under ZeRO-3 is not supported: DeepSpeed's parameter hooks break "
                                "each compiled layer apart; use --fsdp full_shard (which shards the same) or "
                                "--deepspeed zero2")
        if self.optim.startswith("paged_") and self.full and not self.deepspeed:  # (the dry run plans a card's bf16)
            import torch

            from . import accel

            asked = "bfloat16" if self.dry_run and self.torch_dtype == "auto" else self.torch_dtype
            if accel.resolve_dtype(asked) == torch.bfloat16:
                raise engines.paged_bf16_error(self.optim)
        if self.fsdp:
            engines.fsdp_config(self.fsdp)
            if self.optim.startswith("paged_"):
                raise UserError(f"--optim {self.optim} under --fsdp is not supported: bitsandbytes' optimizers do "
                                "not step FSDP2's sharded (DTensor) parameters; use --optim adamw_8bit (torchao), "
                                "which does")
            if self.qlora:
                raise UserError("--qlora under --fsdp is not supported yet (FSDP2 cannot shard bitsandbytes 4-bit "
                                "weights here); use --deepspeed zero2, or --lora")
        if self.plan_zero == "none" and self.dry_run:
            if self.deepspeed:
                stage = engines.zero_stage(engines.deepspeed_config(self.deepspeed))
                self.plan_zero = f"zero{stage}" if stage else "none"
            elif self.fsdp:
                self.plan_zero = "zero3"
        if self.dry_run and self.qlora and self.plan_zero == "zero3":
            raise UserError("--qlora under ZeRO-3 is not supported: 4-bit weights cannot be partitioned by ZeRO-3 "
                            "here; plan --plan_zero zero2 (or zero1), or --lora")
        for name, low in (("nnodes", 1), ("node_rank", 0)):
            if getattr(self, name) < low:
                raise UserError(f"--{name} must be at least {low}, got {getattr(self, name)}")
        if self.node_rank >= self.nnodes:
            raise UserError(f"--node_rank {self.node_rank} is not below --nnodes {self.nnodes}")

    def _check_numbers(self) -> None:
        """Values the batching, the optimizer, the schedule, LoRA or the image processor cannot use: one line
        here, not a traceback (or a run that silently learns nothing) later."""
        at_least_one = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "lora_rank",
                        "logging_steps", "save_steps")
        pixels = ("max_pixels", "min_pixels", "video_max_pixels", "video_fps")
        checks = (
            *((name, getattr(self, name) >= 1, "must be at least 1") for name in at_least_one),
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("num_train_epochs", self.max_steps > 0 or self.num_train_epochs > 0,
             "must be positive (or give --max_steps)"),
            ("warmup_ratio", 0 <= self.warmup_ratio <= 1, "must be in [0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("min_lr_rate", self.min_lr_rate is None or 0 <= self.min_lr_rate < 1, "must be in [0, 1)"),
            ("lr_decay_ratio", 0 < self.lr_decay_ratio <= 1, "must be in (0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("adam_beta1", 0 <= self.adam_beta1 < 1, "must be in [0, 1)"),
            ("adam_beta2", 0 <= self.adam_beta2 < 1, "must be in [0, 1)"),
            ("adam_epsilon", self.adam_epsilon > 0, "must be positive"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0 (0 disables clipping)"),
            ("lora_alpha", self.lora_alpha > 0, "must be positive (0 scales the adapters to nothing)"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("save_total_limit", self.save_total_limit is None or self.save_total_limit >= 1, "must be at least 1"),
            ("eval_steps", self.eval_steps is None or self.eval_steps >= 1, "must be at least 1"),
            ("early_stopping_patience", self.early_stopping_patience is None or self.early_stopping_patience >= 1,
             "must be at least 1"),
            ("dataset_num_proc", self.dataset_num_proc >= 1, "must be at least 1"),
            *((name, getattr(self, name) is None or getattr(self, name) > 0, "must be positive") for name in pixels),
        )
        for name, ok, problem in checks:
            if not ok:
                raise UserError(f"--{name} {problem}, got {getattr(self, name)}")

    def _check_lora_init(self) -> None:
        from .models.lora_init import check, mutates_base
        from .train import engines

        kind = self.init_lora_weights
        check(kind)
        if kind == "default":
            return
        mutates = mutates_base(kind)
        clash = "--full (it starts new LoRA adapters)" if self.full else \
            f"--adapters {self.adapters} (they start as trained)" if self.adapters else \
            "--use_dora (DoRA's magnitudes do not convert to plain LoRA)" if self.use_dora and mutates else \
            "--qlora (its base is 4-bit; the residual would have to be quantized again)" if self.qlora and mutates \
            else "ZeRO-3 (it partitions the weights PiSSA / OLoRA decompose)" if mutates and self.deepspeed and \
            engines.zero_stage(engines.deepspeed_config(self.deepspeed)) == 3 else None
        if clash:
            raise UserError(f"--init_lora_weights {kind} does not combine with {clash}")

    def refuse_mutated_reference(self, uses_reference: bool, way_out: str) -> None:
        """PiSSA / OLoRA take the adapters' start out of the base weights: a reference computed as the model without
        its adapters (DPO, KTO, GRPO with --beta) would lack it."""
        from .models.lora_init import mutates_base

        if uses_reference and mutates_base(self.init_lora_weights):
            raise UserError(f"--init_lora_weights {self.init_lora_weights}: this run's reference is the model "
                            "without its adapters, whose base lacks what PiSSA / OLoRA move into them; use "
                            f"--init_lora_weights default or gaussian, or {way_out}")

    def refuse_new_tokens(self, what: str = "--new_special_tokens") -> None:
        """New tokens grow the embedding before training, which ZeRO-3's partitioned weights and vLLM's vocabulary
        cannot follow: refused for the flag here, and for tokens an --adapters run brings when the run starts."""
        from .train import engines

        if self.deepspeed and engines.zero_stage(engines.deepspeed_config(self.deepspeed)) == 3:
            raise UserError(f"{what} under ZeRO-3 is not supported: the embedding grows before training, which "
                            "ZeRO-3's partitioned weights do not allow here; use --deepspeed zero2 or --fsdp")
        if getattr(self, "use_vllm", False):
            raise UserError(f"{what} with --use_vllm is not supported: vLLM holds the base's vocabulary; generate "
                            "with transformers (drop --use_vllm)")

    def validate(self) -> "SFTConfig":
        if not self.model:
            raise UserError("--model is required (a hub id such as Qwen/Qwen3-0.6B, or a local directory)")
        if not self.dataset and not self.dry_run:
            raise UserError("--dataset is required (a .jsonl or .json file)")
        self._check_plan_options()
        self._check_engine_options()
        modes = [m for m in ("lora", "qlora", "full") if getattr(self, m)]
        if len(modes) > 1:
            raise UserError(f"choose one training mode, got {' and '.join('--' + m for m in modes)}")
        if self.adapters is not None:
            if self.full:
                raise UserError("--adapters continues LoRA adapters; it does not combine with --full")
            if not (Path(self.adapters) / "adapter_config.json").is_file():
                raise UserError(f"--adapters {self.adapters}: no adapter_config.json there (a LoRA checkpoint "
                                "directory is expected)")
        if self.rope_scaling is not None:
            from .models.rope import parse

            spec = parse(self.rope_scaling)
            self.rope_scaling = spec if spec is None or isinstance(spec, str) else json.dumps(spec)
        if self.new_special_tokens:
            from .models.tokens import read_tokens

            self.new_special_tokens = read_tokens(self.new_special_tokens)  # (args.json records the tokens)
            self.refuse_new_tokens()
        if self.learning_rate is None:
            self.learning_rate = default_learning_rate(self.full, self.miniature)
            if self.miniature:
                self.learning_rate_note = (f"learning rate {self.learning_rate:g}: the --miniature default, at which a "
                                           f"random miniature visibly learns (real models default to "
                                           f"{default_learning_rate(self.full, False):g})")
        self._check_numbers()
        if self.max_pixels and self.min_pixels and self.min_pixels > self.max_pixels:
            raise UserError(f"--min_pixels {self.min_pixels} is above --max_pixels {self.max_pixels}")
        if self.min_lr_rate is not None and self.lr_scheduler_type not in ("cosine_with_min_lr", "warmup_stable_decay"):
            raise UserError(f"--min_lr_rate sets the floor of cosine_with_min_lr and warmup_stable_decay; "
                            f"--lr_scheduler_type {self.lr_scheduler_type} has none (choose one of those)")
        if self.lr_decay_ratio != LR_DECAY_RATIO and self.lr_scheduler_type != "warmup_stable_decay":
            raise UserError(f"--lr_decay_ratio applies to --lr_scheduler_type warmup_stable_decay, not "
                            f"{self.lr_scheduler_type}")
        if self.neftune_noise_alpha is not None and self.neftune_noise_alpha <= 0:
            raise UserError(f"--neftune_noise_alpha must be positive, got {self.neftune_noise_alpha}")
        if self.router_aux_loss_coef is not None and not self.router_aux_loss_coef >= 0:
            raise UserError(f"--router_aux_loss_coef must be 0 or more, got {self.router_aux_loss_coef}")
        for flag in ("trainable_parameters", "freeze_parameters"):
            for pattern in getattr(self, flag):
                if not self.full:
                    raise UserError(f"--{flag} chooses what trains under --full; LoRA's are --target_modules")
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise UserError(f"--{flag} '{pattern}' is not a regular expression ({e})") from None
        self._check_lora_init()
        if self.lora_plus_ratio is not None and (self.lora_plus_ratio <= 0 or self.full):
            raise UserError(f"--lora_plus_ratio must be positive and needs LoRA adapters (--lora or --qlora), got "
                            f"--lora_plus_ratio {self.lora_plus_ratio}{' with --full' if self.full else ''}")
        for name, frozen in (("vit_lr", "freeze_vit"), ("aligner_lr", "freeze_aligner")):
            if getattr(self, name) is not None and (getattr(self, name) <= 0 or getattr(self, frozen)):
                raise UserError(f"--{name} must be positive and needs --{frozen} false (a frozen part has no "
                                f"learning rate), got --{name} {getattr(self, name)}")
        if self.freeze_vit and self.freeze_aligner and self.freeze_llm:
            raise UserError("--freeze_vit, --freeze_aligner and --freeze_llm together leave nothing to train")
        if not 0.0 <= self.split_ratio < 1.0:
            raise UserError(f"--split_ratio must be in [0, 1), got {self.split_ratio}")
        if self.streaming and self.max_steps <= 0:
            raise UserError("--streaming needs --max_steps (a stream has no length to count epochs by)")
        if (self.streaming or self.lazy_tokenize) and self.packing:
            raise UserError("--packing needs the encoded lengths up front; it does not combine with --streaming "
                            "or --lazy_tokenize")
        selected = next((spec for spec in self.dataset if spec.rpartition("#")[2].isdigit()), None)
        if self.streaming and selected:  # (found once the model was built and the stream opened)
            raise UserError(f"--dataset {selected}: '#N' selection needs the whole source; it does not combine with "
                            "--streaming")
        if self.streaming and self.split_ratio:
            raise UserError("--split_ratio needs the whole dataset; with --streaming give --val_dataset")
        if self.split_ratio and self.val_dataset:
            raise UserError("--split_ratio and --val_dataset are two sources of validation rows; choose one")
        for flag in ("eval_steps", "early_stopping_patience"):
            if getattr(self, flag) is not None and not (self.split_ratio or self.val_dataset):
                raise UserError(f"--{flag} needs validation rows: add --val_dataset or --split_ratio")
        if self.packing and not self.padding_free:
            raise UserError("--packing needs padding-free batches (drop --padding_free false)")
        if self.eval_after_train and not self.eval_dataset:
            raise UserError("--eval_after_train needs --eval_dataset (e.g. gsm8k-test, mcq-demo, or a file)")
        if self.eval_dataset and not self.eval_after_train:
            raise UserError("--eval_dataset is scored after training: add --eval_after_train (validation loss "
                            "during training comes from --val_dataset)")
        if not self.output_dir:
            short = Path(self.model.rstrip("/")).name or "model"
            self.output_dir = str(Path("output") / f"{short}-{time.strftime('%Y%m%d-%H%M%S')}")
        return self


@dataclass
class PTConfig(SFTConfig):
    """`wb pt`: the same options; rows are {"text": ...} and every token is trained."""

    truncation_strategy: str = _f("split", "Texts longer than --max_length: split into consecutive pieces (default), "
                                           "drop, or keep the left / right part.",
                                  choices=("split", "drop", "left", "right"))


def check_port(port: int, flag: str = "--port") -> None:
    if not 0 <= port <= 65535:
        raise UserError(f"{flag} must be in 0..65535, got {port}")


def check_pairwise(cfg: SFTConfig, command: str) -> None:
    """Pairwise/grouped methods encode their batches up front and lay them out padding-free, score completions
    only, and drop (never cut) a row over --max_length: a cut pair would compare a completion with a part of
    another."""
    if cfg.packing or cfg.streaming or cfg.lazy_tokenize or not cfg.padding_free:
        raise UserError(f"wb {command} batches its sequences together padding-free: --packing, --streaming, "
                        "--lazy_tokenize and --padding_free false are not supported")
    if cfg.loss_scope == "all":
        raise UserError(f"wb {command} scores the completions only: --loss_scope all (which would score the prompt "
                        "too) does not apply; assistant or last_assistant")
    if cfg.truncation_strategy != "drop":
        raise UserError(f"wb {command} drops rows over --max_length (counted in the report); --truncation_strategy "
                        f"{cfg.truncation_strategy} does not apply")


@dataclass
class DPOConfig(SFTConfig):
    """`wb dpo`: pairwise preference training on prompt + chosen/rejected rows."""

    NOT_OPTIONS = ("neftune_noise_alpha",)  # (NEFTune is for supervised fine-tuning: wb sft and wb pt)

    loss_type: str = _f("sigmoid", "sigmoid (DPO), ipo, hinge, robust, or the reference-free simpo, orpo, cpo.",
                        choices=("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo", "cpo"))
    beta: float = _f(0.1, "Strength of the preference term (DPO's beta; ORPO's lambda).")
    label_smoothing: float = _f(0.0, "Assumed label-flip rate for sigmoid/robust/simpo/cpo (conservative DPO).")
    rpo_alpha: float | None = _f(None, "Weight of an NLL term on the chosen completion (default: 1 for cpo/orpo, "
                                       "0 otherwise).")
    simpo_gamma: float = _f(0.5, "SimPO's target reward margin.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input (0, as TRL's disable_dropout: policy and reference "
                                  "score a pair alike).")
    precompute_ref_logps: bool = _f(False, "Score every pair with the reference once before training; full-"
                                           "parameter runs then keep no reference copy in memory.")

    def validate(self) -> "DPOConfig":
        super().validate()
        check_pairwise(self, "dpo")
        if not 0 <= self.label_smoothing < 0.5:  # (0.5 and above flip what is preferred)
            raise UserError(f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type in ("hinge", "ipo", "orpo"):
            raise UserError(f"--label_smoothing applies to sigmoid, robust, simpo and cpo, not --loss_type "
                            f"{self.loss_type}")
        if self.beta <= 0:
            raise UserError(f"--beta must be positive, got {self.beta}")
        from .train.dpo import REFERENCE_FREE

        self.refuse_mutated_reference(self.loss_type not in REFERENCE_FREE,
                                      f"a reference-free --loss_type ({', '.join(REFERENCE_FREE)})")
        return self


@dataclass
class KTOConfig(SFTConfig):
    """`wb kto`: unpaired preference training on answers labelled desirable (true) or undesirable (false)."""

    NOT_OPTIONS = ("neftune_noise_alpha",)  # (NEFTune is for supervised fine-tuning: wb sft and wb pt)

    beta: float = _f(0.1, "Strength of the KTO value function.")
    desirable_weight: float = _f(1.0, "Loss weight of desirable examples (raise it when they are the minority).")
    undesirable_weight: float = _f(1.0, "Loss weight of undesirable examples.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input (0, as TRL's disable_dropout: policy and reference "
                                  "score an answer alike).")

    def validate(self) -> "KTOConfig":
        super().validate()
        check_pairwise(self, "kto")
        if self.per_device_train_batch_size < 2:
            raise UserError("wb kto needs --per_device_train_batch_size >= 2 (the KL estimate pairs prompts with "
                            "other rows' answers)")
        self.refuse_mutated_reference(True, "wb dpo with a reference-free --loss_type")
        return self


@dataclass
class RMConfig(SFTConfig):
    """`wb rm`: a reward model (sequence-classification head, Bradley-Terry loss) from preference pairs."""

    # (NEFTune is for supervised fine-tuning; the score head's loss has no MoE load-balancing term, as in TRL)
    NOT_OPTIONS = ("neftune_noise_alpha", "router_aux_loss_coef")

    center_rewards_coefficient: float | None = _f(None, "Adds c x (r_chosen + r_rejected)^2 to keep rewards "
                                                        "centred near zero (e.g. 0.01).")

    def validate(self) -> "RMConfig":
        super().validate()
        check_pairwise(self, "rm")
        if self.eval_after_train:
            raise UserError("--eval_after_train scores generated answers; a reward model scores answers instead "
                            "(check it with `wb infer --query --response`)")
        return self


GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
GRPO_SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPOConfig(SFTConfig):
    """`wb grpo`: group-relative policy optimisation with reward functions on prompts."""

    # options of supervised training that do not apply: prompts are encoded as they are drawn
    NOT_OPTIONS = ("max_length", "truncation_strategy", "dataset_num_proc", "dataset_cache", "cache_dir",
                   "lazy_tokenize", "streaming", "loss_scope", "padding_free", "packing", "neftune_noise_alpha",
                   "router_aux_loss_coef")  # (the policy-gradient loss has no load-balancing term, as in TRL)

    per_device_train_batch_size: int = _f(8, "Completions per device per micro-batch; the completions of one "
                                             "optimizer step (x accumulation x processes) must be a multiple of "
                                             "--num_generations, and groups stay on one process.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input (0: the sampling and training policies agree).")
    logging_steps: int = _f(1, "Log every N optimizer steps.")
    save_steps: int = _f(100, "Save a checkpoint every N optimizer steps (and always at the end).")
    # sampling
    num_generations: int = _f(8, "Completions sampled per prompt (the group advantages are computed over).")
    max_prompt_length: int = _f(512, "Prompts longer than this many tokens are dropped (counted in the report).")
    max_completion_length: int = _f(256, "Longest completion in tokens.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold.")
    top_k: int = _f(0, "Sample among the k most likely tokens (0: no limit).")
    repetition_penalty: float = _f(1.0, "Penalty on tokens already present (1: none).")
    enable_thinking: bool | None = _f(None, "Hybrid-thinking models: false pre-fills an empty think block in the "
                                            "prompt.")
    eval_temperature: float = _f(0.0, "Temperature of the one completion per validation prompt (--val_dataset or "
                                      "--split_ratio); 0 is greedy.")
    # rewards
    reward_funcs: list = _f([], "Reward functions: accuracy, format, length, cosine, repetition, tool_call_valid, a "
                                "registered name, or path/to/file.py:function (repeat to combine).")
    reward_weights: list = _f([], "One weight per reward function (and the reward model last); default all 1.")
    reward_model: str | None = _f(None, "A `wb rm` checkpoint whose score is one more reward.")
    format_pattern: str = _f(r"^\s*<think>.*?</think>\s*\S.*$", "Regular expression the `format` reward "
                                                                  "matches the whole completion against.")
    soft_cache_length: int = _f(0, "`length` reward: the penalty ramps to -1 over this many tokens before "
                                   "--max_completion_length (default a quarter of it).")
    cosine_max_len: int | None = _f(None, "`cosine` reward: the length at which the schedule ends (default "
                                          "--max_completion_length).")
    repetition_ngram: int = _f(3, "`repetition` reward: n-gram size.")
    repetition_max_penalty: float = _f(-1.0, "`repetition` reward: the penalty when every n-gram repeats.")
    # the objective
    loss_type: str = _f("grpo", "grpo (per-completion mean), dr_grpo (no length or std normalisation), dapo "
                                "(token-level mean), bnpo (per-micro-batch token mean).", choices=GRPO_LOSS_TYPES)
    scale_rewards: str = _f("group", "Divide advantages by the std of the group, of the batch, or none "
                                     "(Dr. GRPO).", choices=GRPO_SCALE_REWARDS)
    epsilon: float = _f(0.2, "Clipping range of the importance ratio (the lower side, and the upper one unless "
                             "--epsilon_high).")
    epsilon_high: float | None = _f(None, "Upper clipping range (DAPO's clip-higher, e.g. 0.28).")
    beta: float = _f(0.0, "KL penalty to the reference model (LoRA: the adapter-disabled model); 0 loads no "
                          "reference.")
    importance_sampling_level: str = _f("token", "token (GRPO) or sequence (GSPO: one ratio per completion).",
                                        choices=("token", "sequence"))
    num_iterations: int = _f(1, "Optimizer steps per generation batch (the mu of PPO); >1 keeps the sampling "
                                "policy's log-probs for the ratio.")
    mask_truncated_completions: bool = _f(False, "Leave completions cut at --max_completion_length out of the "
                                                 "loss (DAPO).")
    log_completions: bool = _f(True, "Append each logged step's prompts, completions and rewards to "
                                     "<output_dir>/completions.jsonl.")
    # generation backends
    generation_batch_size: int = _f(0, "transformers backend: at most this many sequences per generate call "
                                       "(0: all of a step's at once).")
    static_cache: bool | None = _f(None, "transformers backend: decode over a preallocated KV cache, the decode "
                                         "step captured once as a CUDA graph and replayed on CUDA (default: on "
                                         "CUDA, unless the weights are sharded); false: a growing cache, every "
                                         "kernel launched per token; true on CPU: the static cache, eager.")
    use_vllm: bool = _f(False, "Generate with vLLM (GPU): in this process (--vllm_mode colocate) or a "
                               "`wb rollout` server (--vllm_mode server).")
    vllm_mode: str = _f("colocate", "colocate or server.", choices=("colocate", "server"))
    vllm_server_host: str = _f("127.0.0.1", "Host of the `wb rollout` server.")
    vllm_server_port: int = _f(8000, "Port of the `wb rollout` server.")
    vllm_gpu_memory_utilization: float = _f(0.3, "Colocated vLLM: fraction of GPU memory its engine may take.")
    vllm_max_model_len: int | None = _f(None, "Colocated vLLM: context length (default prompt + completion "
                                              "lengths).")

    def validate(self) -> "GRPOConfig":
        super().validate()
        if not self.reward_funcs and not self.reward_model and not self.dry_run:
            raise UserError("wb grpo needs --reward_funcs (e.g. accuracy format) or --reward_model")
        if self.use_vllm and (self.fsdp or self.deepspeed):
            from .train.engines import deepspeed_config, zero_stage

            if self.fsdp or zero_stage(deepspeed_config(self.deepspeed)) == 3:
                raise UserError("--use_vllm with sharded weights (--fsdp, ZeRO-3) is not supported yet (they would "
                                "have to be gathered for every sync); use --deepspeed zero2, or drop --use_vllm")
        if self.use_vllm and self.rope_scaling:
            raise UserError(USE_VLLM_ROPE)
        self.refuse_mutated_reference(self.beta != 0.0, "--beta 0 (no reference)")
        n_rewards = len(self.reward_funcs) + (1 if self.reward_model else 0)
        if self.reward_weights and len(self.reward_weights) != n_rewards:
            raise UserError(f"--reward_weights has {len(self.reward_weights)} values for {n_rewards} reward "
                            "functions")
        try:
            self.reward_weights = [float(w) for w in self.reward_weights]
        except (TypeError, ValueError):
            raise UserError(f"--reward_weights must be numbers, got {self.reward_weights}") from None
        if not all(math.isfinite(w) for w in self.reward_weights):
            raise UserError(f"--reward_weights must be finite numbers, got {self.reward_weights}")
        if self.num_generations < 2:
            raise UserError("--num_generations must be at least 2 (advantages compare completions of a prompt)")
        local = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if local % self.num_generations:
            raise UserError(f"--per_device_train_batch_size x --gradient_accumulation_steps ({local}) must be a "
                            f"multiple of --num_generations ({self.num_generations}): each process scores whole "
                            "groups")
        for name in ("max_prompt_length", "max_completion_length", "num_iterations", "repetition_ngram",
                     "cosine_max_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        try:
            re.compile(self.format_pattern)
        except re.error as e:
            raise UserError(f"--format_pattern {self.format_pattern!r} is not a regular expression: {e}") from None
        if not 0 <= self.soft_cache_length < self.max_completion_length:
            raise UserError(f"--soft_cache_length must be in [0, --max_completion_length {self.max_completion_length})"
                            f", got {self.soft_cache_length}")
        if self.temperature <= 0:
            raise UserError("--temperature must be positive: GRPO compares sampled completions")
        from .infer.params import SamplingParams

        SamplingParams(max_new_tokens=self.max_completion_length, temperature=self.temperature, top_p=self.top_p,
                       top_k=self.top_k, repetition_penalty=self.repetition_penalty).validate()
        if self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise UserError(f"--epsilon and --epsilon_high must be positive, got {self.epsilon} and "
                            f"{self.epsilon_high}")
        if self.eval_temperature < 0:
            raise UserError(f"--eval_temperature must be >= 0, got {self.eval_temperature}")
        if self.beta < 0:
            raise UserError(f"--beta must be >= 0, got {self.beta}")
        check_port(self.vllm_server_port, "--vllm_server_port")
        return self

    @property
    def sequence_length(self) -> int:
        return self.max_prompt_length + self.max_completion_length

    @property
    def prompts_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations


@dataclass
class RolloutConfig(ModelArgs):
    """`wb rollout`: serve generations to GRPO trainers (`wb grpo --use_vllm --vllm_mode server`)."""

    backend: str = _f("auto", "vllm (GPU), transformers (any machine), or auto: vllm when it is installed and a "
                              "GPU is present.", choices=("auto", "vllm", "transformers"))
    host: str = _f("127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
    port: int = _f(8000, "Port to listen on.")
    gpu_memory_utilization: float = _f(0.9, "vLLM: fraction of GPU memory its engine may take.")
    max_model_len: int | None = _f(None, "vLLM: context length (default the model's).")
    tensor_parallel_size: int = _f(1, "vLLM: GPUs one engine spans.")
    seed: int = _f(42, "Seed (also of a --miniature model: use the trainer's).")

    def validate(self) -> "RolloutConfig":
        if not self.model:
            raise UserError("--model is required: the base model the trainer starts from")
        check_port(self.port)
        return self


@dataclass
class InferConfig(ModelArgs):
    adapters: str | None = _f(None, "A LoRA checkpoint directory from `wb sft` (its args.json names the base).")
    query: str | None = _f(None, "One question to answer; without it (and without --dataset) an interactive chat "
                                 "starts.")
    response: str | None = _f(None, "Reward models (`wb rm` checkpoints): the answer to --query to score.")
    image: list = _f([], "Vision-language models: an image for --query (or the first message of a chat), before "
                         "its text: a path, an http(s) URL or a data URI; repeat for several, in order.")
    video: list = _f([], "Vision-language models: a video for --query (or the first message of a chat), after its "
                         "images: a video file (read with PyAV) or a folder of frame images (in name order); "
                         "repeat for several.")
    system: str | None = _f(None, "System prompt.")
    dataset: list = _f([], "Batch inference over data: .jsonl/.json/.csv/.parquet files, folders or "
                           "hf::org/name[:subset][:split], in any format `wb sft` reads or prompts alone; the "
                           "prompt is the conversation before its final assistant turn (kept as the reference). "
                           "Append #N to take N rows (seeded). Needs --output.")
    columns: dict | None = _f(None, "Rename source columns before format detection, as JSON: "
                                    "'{\"question\": \"query\"}'.")
    output: str | None = _f(None, "Batch inference: the .jsonl file results are appended to, a row as soon as it "
                                  "is finished; rows already there are skipped, so a stopped run continues.")
    max_new_tokens: int = _f(512, "Longest answer in tokens.")
    temperature: float = _f(0.0, "Sampling temperature; 0 means greedy decoding.")
    top_p: float = _f(1.0, "Nucleus sampling threshold, in (0, 1] (with temperature > 0).")
    top_k: int = _f(0, "Sample among the k most likely tokens (0: no limit; with temperature > 0).")
    repetition_penalty: float = _f(1.0, "Penalty on tokens already in the prompt or answer (1: none).")
    stop: list = _f([], "Stop strings: an answer ends before the first of them it generates (not included).")
    num_return_sequences: int = _f(1, "Answers per prompt (--query and --dataset; chat gives one).")
    json_schema: str | None = _f(None, "Constrain every answer to JSON of this schema: a .json file or inline JSON "
                                       "('{\"type\": \"object\"}' is any JSON object); the whole answer is "
                                       "that JSON, written compact (docs/infer.md#json-output).")
    enable_thinking: bool | None = _f(None, "Hybrid-thinking models: false pre-fills an empty think block.")
    seed: int = _f(42, "Seed for sampling: the same seed gives the same answers, whatever else is batched "
                       "alongside.")
    infer_backend: str = _f("transformers", "transformers (continuous batching on any device) or vllm (GPU; "
                                            "pip install vllm).", choices=("transformers", "vllm"))
    max_batch_size: int = _f(32, "Answers generated together in the running batch (vLLM: max_num_seqs).")
    vllm_gpu_memory_utilization: float = _f(0.9, "vLLM: fraction of GPU memory its engine may take.")
    vllm_max_model_len: int | None = _f(None, "vLLM: context length (default the model's).")
    vllm_tensor_parallel_size: int = _f(1, "vLLM: GPUs one engine spans.")

    def validate(self) -> "InferConfig":
        if not self.model and not self.adapters:
            raise UserError("give --model (a model or full checkpoint) or --adapters (a LoRA checkpoint)")
        if self.dataset and not self.output:
            raise UserError("--dataset needs --output FILE.jsonl (where the answers go)")
        if self.output and not self.dataset:
            raise UserError("--output is for batch inference: give --dataset too")
        if self.num_return_sequences < 1:
            raise UserError(f"--num_return_sequences must be at least 1, got {self.num_return_sequences}")
        if self.dataset and self.query is not None:
            raise UserError("give --query or --dataset, not both")
        if (self.image or self.video) and self.dataset:
            raise UserError("--image and --video are for --query or a chat; a --dataset row names its own")
        if self.max_batch_size < 1:
            raise UserError(f"--max_batch_size must be at least 1, got {self.max_batch_size}")
        return self


@dataclass
class EvalConfig(ModelArgs):
    """`wb eval`: score a model, checkpoint(s), an export or an OpenAI-compatible endpoint on evaluation data."""

    adapters: list = _f([], "LoRA checkpoints to evaluate (several: one comparison table); their args.json names "
                            "the base.")
    with_base: bool = _f(False, "Also evaluate the base model the checkpoint(s) were trained from, and print the "
                                "difference.")
    api_url: str | None = _f(None, "Evaluate an OpenAI-compatible endpoint instead of a local model, e.g. "
                                   "http://127.0.0.1:8000/v1 (a `wb deploy` server, vLLM, a hosted API).")
    api_key: str | None = _f(None, "Bearer token for --api_url.")
    api_model: str | None = _f(None, "Model name sent to --api_url (default: the one its /models lists; required "
                                     "where it lists several).")
    eval_dataset: list = _f([], "Evaluation data: a named dataset (gsm8k-test, mcq-demo; `wb datasets`) or a file "
                                "in any format the data layer reads (prompt + reference answer, MMLU-style "
                                "question/choices/answer), hf::org/name[:subset][:split]; #N takes N rows "
                                "(seeded); repeat for several.")
    metric: str | None = _f(None, "How answers are scored: math, choice, exact_match, f1, rouge or perplexity "
                                  "(default: the named dataset's; files need one).", choices=EVAL_METRICS)
    limit: int | None = _f(None, "Evaluate the first N rows of each dataset.")
    seed: int = _f(42, "Seed for '#N' row selection and for sampling (with --temperature > 0).")
    eval_batch_size: int = _f(32, "Answers generated together (requests in flight with --api_url).")
    max_new_tokens: int = _f(512, "Longest answer in tokens.")
    temperature: float = _f(0.0, "Sampling temperature; 0 (default) is greedy, so the same command gives the same "
                                 "numbers.")
    enable_thinking: bool | None = _f(None, "Hybrid-thinking models: false pre-fills an empty think block.")
    max_length: int = _f(2048, "perplexity: longest row in tokens (longer rows are cut).")
    eval_backend: str = _f("native", "native (this package's tasks and metrics) or evalscope (EvalScope's "
                                     "general_mcq / general_qa against --api_url or a `wb deploy` server this "
                                     "command starts; EvalScope lives in its own environment, see "
                                     "--evalscope_python).", choices=("native", "evalscope"))
    evalscope_python: str | None = _f(None, "The Python of the environment EvalScope is installed in (default: "
                                            "$WB_EVALSCOPE_PYTHON, else this one); docs/eval.md says how.")
    output_dir: str = _f("", "Where results.json and the per-row predictions go (default: output/eval-<timestamp>).")

    def validate(self) -> "EvalConfig":
        if not self.eval_dataset:
            raise UserError("give --eval_dataset (a named dataset such as gsm8k-test or mcq-demo, or a file)")
        if self.api_url and (self.model or self.adapters or self.miniature):
            raise UserError("give --api_url or a local model (--model / --adapters), not both")
        if not self.api_url and not self.model and not self.adapters:
            raise UserError("give --model, --adapters or --api_url")
        if self.with_base and not self.adapters:
            raise UserError("--with_base compares checkpoints with their base: give --adapters")
        for name, value in (("eval_batch_size", self.eval_batch_size), ("max_new_tokens", self.max_new_tokens)):
            if value < 1:
                raise UserError(f"--{name} must be at least 1, got {value}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if not self.output_dir:
            self.output_dir = str(Path("output") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
        return self


@dataclass
class DeployConfig(ModelArgs):
    """`wb deploy`: an OpenAI-compatible HTTP server for a model and its LoRA adapters."""

    adapters: list = _f([], "LoRA checkpoints to serve beside the base, as name=path (a request's `model` picks one "
                            "by name) or a bare path (named after its directory); without --model the base is the "
                            "one their args.json names.", metavar="NAME=PATH")
    served_model_name: str | None = _f(None, "The name the base model is served under (default: --model as given, "
                                             "or the adapters' base model id).")
    host: str = _f("127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
    port: int = _f(8000, "Port to listen on (0: a free port, printed at start-up).")
    api_key: str | None = _f(None, "Clients must send 'Authorization: Bearer KEY' on every route but /health "
                                   "(default: $WB_API_KEY; neither set: no key needed).")
    infer_backend: str = _f("transformers", "transformers (continuous batching on any device) or vllm (GPU; "
                                            "pip install vllm).", choices=("transformers", "vllm"))
    max_batch_size: int = _f(32, "Completions decoded together (continuous batching); 1 serves them one at a time "
                                 "(vLLM: max_num_seqs).")
    max_model_len: int | None = _f(None, "Longest prompt + completion in tokens (default: the model's "
                                         "max_position_embeddings); longer requests are refused with 400.")
    vllm_gpu_memory_utilization: float = _f(0.9, "vLLM: fraction of GPU memory its engine may take.")
    vllm_tensor_parallel_size: int = _f(1, "vLLM: GPUs one engine spans.")
    max_tokens_limit: int | None = _f(None, "Ceiling on a request's max_tokens (400 above it); requests without "
                                            "max_tokens get up to this many (default: what the context leaves).")
    max_request_bytes: int = _f(32 << 20, "Largest request body accepted, in bytes; larger ones get 413 (images "
                                          "travel as base64 data URIs).")
    drain_timeout: float = _f(30.0, "On SIGTERM or Ctrl-C: seconds in-flight requests get to finish before they "
                                    "are cancelled.")
    allow_private_media_urls: bool = _f(False, "Fetch clients' image and video URLs whose host is a loopback, "
                                               "private or link-local address too (refused by default: a client "
                                               "must not make the server reach into its own network).")
    access_log: bool = _f(True, "Log one line per request.")

    def validate(self) -> "DeployConfig":
        import os

        if not self.model and not self.adapters:
            raise UserError("give --model (a model or full checkpoint) and/or --adapters NAME=PATH (LoRA checkpoints)")
        self.adapter_paths()
        for name, low in (("max_batch_size", 1), ("max_model_len", 2), ("max_tokens_limit", 1),
                          ("max_request_bytes", 1024), ("drain_timeout", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise UserError(f"--{name} must be at least {low}, got {value}")
        check_port(self.port)
        if self.api_key is None:
            self.api_key = os.environ.get("WB_API_KEY") or None
        return self

    def adapter_paths(self) -> dict[str, str]:
        """{served name: LoRA checkpoint directory}, from NAME=PATH or PATH values."""
        out: dict[str, str] = {}
        for value in self.adapters:
            value = str(value)
            name, sep, path = value.partition("=")
            if not sep or Path(value).is_dir():
                name, path = Path(value.rstrip("/")).name, value
            if not name or not path:
                raise UserError(f"--adapters {value!r}: expected NAME=PATH")
            if not (Path(path) / "adapter_config.json").is_file():
                raise UserError(f"--adapters {value}: no adapter_config.json in {path} (a LoRA checkpoint "
                                "directory is expected)")
            if name in out or name in ("base", self.served_model_name or self.model):
                raise UserError(f"--adapters: the name {name!r} is taken; give each adapter its own name")
            out[name] = path
        return out


PREVIEW_TASKS = ("auto", "sft", "pt", "dpo", "kto", "rm", "grpo")


CALIBRATION, SHARD_SIZE = ["gsm8k-test#32"], "5GB"  # wb export's defaults


@dataclass
class ExportConfig(ModelArgs):
    """`wb export`: a checkpoint as a standard Hugging Face model (LoRA adapters merged)."""

    NOT_OPTIONS = ("miniature", "attn_implementation")

    adapters: str | None = _f(None, "A LoRA checkpoint (its args.json names the base); with --merge its adapters are "
                                    "folded into the base weights.")
    merge: bool = _f(False, "Fold LoRA / DoRA / rsLoRA / QLoRA adapters into the base weights (QLoRA: into the "
                            "4-bit base dequantized to --torch_dtype).")
    torch_dtype: str = _f("auto", "dtype of the written weights (and of GPTQ/AWQ's computation): auto (the dtype "
                                  "the model's config.json states, the base model's for --adapters: the same file "
                                  "on any machine; --to gguf: float32, rounded once to --gguf_type), bfloat16, "
                                  "float16 or float32.", choices=TORCH_DTYPES)
    output_dir: str = _f("", "Where the export goes (default: next to the checkpoint, <name>-merged).")
    overwrite_output_dir: bool = _f(False, "Replace an --output_dir that is not empty.")
    max_shard_size: str = _f(SHARD_SIZE, "Largest safetensors shard (e.g. 2GB, 500MB).")
    to: str = _f("hf", "hf: a Hugging Face model directory; gguf: a GGUF file (llama.cpp, Ollama) and an Ollama "
                       "Modelfile (Qwen3, Qwen2/2.5, Llama-3 and 3.1-3.3).", choices=("hf", "gguf"))
    gguf_type: str | None = _f(None, "GGUF weight type with --to gguf: f16 (default) or q8_0.",
                               choices=("f16", "q8_0"))
    quant_method: str | None = _f(None, "Write quantized weights that transformers reloads: bnb (bitsandbytes "
                                        "NF4 / LLM.int8), torchao (int4 / int8 weight-only), gptq (int4 in groups "
                                        "/ int8, rounded by GPTQ on --dataset), awq (int4 in groups, AWQ's "
                                        "activation-aware scales from --dataset) or fp8 (FP8 E4M3 weights, dynamic "
                                        "per-token activations); gptq, awq and fp8 are compressed-tensors, as vLLM "
                                        "serves.", choices=("bnb", "torchao", "gptq", "awq", "fp8"))
    quant_bits: int | None = _f(None, "Bits per weight for --quant_method: 4 or 8 (default 4; fp8: 8).",
                                choices=(4, 8))
    dataset: list = _f(CALIBRATION, "Calibration rows for --quant_method (chat or instruction data; #N takes "
                                          "N rows): GPTQ and AWQ fit the weights to them, and the perplexity of the "
                                          "quantized and the unquantized model on them goes into the model card.")
    push_to_hub: bool = _f(False, "Upload the export (with its model card) to --hub_model_id on --hub.")
    hub_model_id: str | None = _f(None, "Repository to upload to, ORG/NAME (created when missing).")
    hub_private: bool = _f(False, "Create the repository private.")
    hub_token: str | None = _f(None, "Access token (default: the hub library's login, HF_TOKEN or MODELSCOPE_API_TOKEN).")

    def validate(self) -> "ExportConfig":
        if not self.model and not self.adapters:
            raise UserError("give --adapters (a LoRA checkpoint, with --merge) or --model (a full checkpoint)")
        if self.push_to_hub and (not self.hub_model_id or self.hub_model_id.count("/") != 1):
            raise UserError("--push_to_hub needs --hub_model_id ORG/NAME")
        if self.quant_method and self.to == "gguf":
            raise UserError("--quant_method writes a Hugging Face model; a GGUF export quantizes with --gguf_type q8_0")
        if self.quant_method and self.quant_bits is None:
            self.quant_bits = 8 if self.quant_method == "fp8" else 4
        # options that only mean something beside another (they were ignored: an unquantized export, exit 0)
        for given, needs in ((self.quant_bits is not None and not self.quant_method,
                              "--quant_bits needs --quant_method"),
                             (self.gguf_type is not None and self.to != "gguf", "--gguf_type needs --to gguf"),
                             ((self.hub_model_id or self.hub_private or self.hub_token) and not self.push_to_hub,
                              "--hub_model_id, --hub_private and --hub_token need --push_to_hub"),
                             (self.dataset != CALIBRATION and not self.quant_method,
                              "--dataset (calibration rows) needs --quant_method"),
                             (self.max_shard_size != SHARD_SIZE and self.to == "gguf",
                              "--max_shard_size shards a Hugging Face export; a GGUF is one file")):
            if given:
                raise UserError(needs)
        if self.to == "gguf" and self.gguf_type is None:
            self.gguf_type = "f16"
        return self


@dataclass
class PreviewConfig(ModelArgs, DataArgs):
    task: str = _f("auto", "Which command's data to show: sft, pt, dpo, kto, rm or grpo; auto infers it from the "
                           "first row of each source (chosen/rejected: dpo, label: kto, text only: pt, a prompt "
                           "without an answer: grpo, else sft).", choices=PREVIEW_TASKS)
    n: int = _f(3, "How many rows to show.")
    json: bool = _f(False, "Print ids and labels as JSON lines instead of highlighted text (one object per row; "
                           "its keys depend on the task, see docs/data.md).")
    loss_scope: str = _f("assistant", "Which tokens are trained: assistant, last_assistant or all.",
                         choices=("assistant", "last_assistant", "all"))
    enable_thinking: bool | None = _f(None, "GRPO prompts of hybrid-thinking models: false pre-fills an empty think "
                                            "block (as wb grpo --enable_thinking false).")
    max_pixels: int | None = _f(None, "Vision-language models: images resized to at most this many pixels (as "
                                      "when training).")
    min_pixels: int | None = _f(None, "Vision-language models: images resized to at least this many pixels.")
    video_fps: float | None = _f(None, "Videos: frames read per second of a file, the rate of a frame list (as when "
                                       "training).")
    video_max_pixels: int | None = _f(None, "Videos: the video processor's upper pixel bound (as when training).")
    new_special_tokens: list = _f([], "Tokens the run adds to the tokenizer, or .txt files with one a line (as when "
                                      "training).")

    def validate(self) -> "PreviewConfig":
        if not self.model or not self.dataset:
            raise UserError("wb data preview needs --model and --dataset")
        if self.n < 1:
            raise UserError(f"--n must be at least 1, got {self.n}")
        return self


# -- building configs from flags, YAML and kwargs ----------------------------------------------
def options(cls) -> list[dataclasses.Field]:
    """The fields a command takes as options (a subclass may set aside some of its parent's: NOT_OPTIONS)."""
    hidden = set(getattr(cls, "NOT_OPTIONS", ()))
    return [f for f in dataclasses.fields(cls) if f.name not in hidden]


def field_types(cls) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in options(cls)}


def unknown_key_error(key: str, cls, where: str, see: str = "") -> UserError:
    hidden = set(getattr(cls, "NOT_OPTIONS", ()))
    if key in hidden:
        return UserError(f"{key!r} does not apply to this command")
    close = closest_name(key, [f.name for f in options(cls)])
    hint = f"; did you mean {close!r}?" if close else (f"; see {see}" if see else "")
    return UserError(f"unknown {where} {key!r}{hint}")


SUGGESTION_CUTOFF = 0.75  # difflib ratio: typos (learning_rat, lora_rnak) pass; deepspeed -> seed does not


def closest_name(name: str, names: list[str]) -> str | None:
    """The valid name `name` is most likely a typo of, or None when none is close: leading dashes are ignored
    and the similarity (difflib's ratio) must reach SUGGESTION_CUTOFF."""
    bare = {n.lstrip("-"): n for n in names}
    close = difflib.get_close_matches(name.lstrip("-"), list(bare), n=1, cutoff=SUGGESTION_CUTOFF)
    return bare[close[0]] if close else None


def load_recipe(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a mapping of option names to values")
    for key in data:
        if not isinstance(key, str):  # (YAML reads `on:` / `yes:` as true, `1:` as a number)
            raise UserError(f"{path}: {key!r} is not an option name (quote it if it is text)")
    return data


# list options whose items are not text: functions (the Python API) or names, and numbers
_NOT_TEXT_LISTS = ("reward_funcs", "reward_weights")
_JSON_TEXT = ("rope_scaling",)  # text options that may be given as an object (a recipe's mapping): kept as JSON


def _text(value: Any, name: str) -> str:
    """A text value as YAML or keyword arguments give it (a number read as one: `output_dir: 123`; a path)."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"{name}: expected text, got {brief(value)}")


def brief(value: Any) -> str:
    """A value for a one-line message: its repr when short, else its type and the repr's start."""
    text = repr(value)
    if len(text) <= 80 and "\n" not in text:
        return text
    return f"a {type(value).__name__} ({text.splitlines()[0][:60]}...)"


def coerce(value: Any, typ: Any, name: str) -> Any:
    """Make YAML/JSON values match the field type (lists from scalars, numbers from strings)."""
    base = str(typ)
    if value is None:
        if "None" not in base:  # (a recipe key left empty, `max_steps:`, reads as null)
            raise UserError(f"{name}: needs a value, got none")
        return None
    if "dict" in base:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise UserError(f"{name}: not valid JSON: {value!r}") from None
        if not isinstance(value, dict):
            raise UserError(f"{name}: expected a JSON object, got {value!r}")
        return value
    if "list" in base:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return items if name in _NOT_TEXT_LISTS else [_text(item, name) for item in items]
    if typ is str or base.startswith("str"):
        return json.dumps(value) if isinstance(value, dict) and name in _JSON_TEXT else _text(value, name)
    if typ is bool or base.startswith("bool"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise UserError(f"{name}: expected true or false, got {value!r}")
    for cast in (int, float):
        if typ is cast or base.startswith(cast.__name__):
            whole = cast is int and isinstance(value, float) and not value.is_integer()  # (1.7 became 1)
            if isinstance(value, bool) or whole:
                raise UserError(f"{name}: expected {'a whole number' if cast is int else 'a number'}, got {value!r}")
            try:
                return cast(value)
            except (TypeError, ValueError):
                raise UserError(f"{name}: expected {cast.__name__}, got {value!r}") from None
    return value


def build_config(cls, values: dict, where: str = "option"):
    types = field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types:
            raise unknown_key_error(key, cls, where)
        kwargs[key] = coerce(value, types[key], key)
    cfg = cls(**kwargs)
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if isinstance(value, str) and value in f.metadata.get("aliases", {}):  # (another library's name for a
            # choice: recipes carry over)
            value = f.metadata["aliases"][value]
            setattr(cfg, f.name, value)
        if choices and value not in choices and not (value is None and f.default is None):
            raise UserError(f"{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
    if getattr(cfg, "template", None):
        from .templates import check_template_name

        check_template_name(cfg.template)
    return cfg.validate()


def save_args(cfg, path: Path, extra: dict | None = None) -> None:
    data = {**dataclasses.asdict(cfg), **(extra or {})}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
