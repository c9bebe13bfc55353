"""The `--dry_run` memory planner against measured peaks of real training steps.

    python benchmarks/memory_plan.py [--device cpu|cuda] [--cases NAME ...] [--json OUT.jsonl]

Each case builds a random model from a config, sets it up exactly as `wb sft` does (pipelines/sft.py's
build_trainable: LoRA / QLoRA / full, gradient checkpointing), and runs two optimizer steps of the real trainer
(Trainer.train_step: padding-free batch, fused loss, clipping, AdamW) on random tokens with every token trained.
The second step's peak is compared with train/memory_plan.py's estimate for the same options:

  cuda  torch.cuda.max_memory_allocated() (what the caching allocator handed out; reserved shown beside)
  cpu   the peak of live tensor bytes, counted by a TorchDispatchMode that sees every tensor an operator returns
        and frees it when its storage dies (deterministic; process RSS adds allocator slack and the libraries)

docs/distributed.md records the table; tests/test_memory_plan.py runs a few CPU cases.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_SMALL = dict(model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=32000,
                   tie_word_embeddings=False, max_position_embeddings=8192)
LLAMA_MEDIUM = dict(LLAMA_SMALL, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                    num_attention_heads=16, num_key_value_heads=4)
# 32 fused experts of 256 x 256 (transformers 5's 3-D expert weights), 4 routed per token
QWEN3_MOE_SMALL = dict(LLAMA_SMALL, model_type="qwen3_moe", moe_intermediate_size=256, num_experts=32,
                       num_experts_per_tok=4, decoder_sparse_step=1, mlp_only_layers=[])
# soft-capped attention scores (eager attention: 4 heads' scores of every token pair) and logits; a small
# vocabulary, so the attention's backward, not the loss's chunk of logits, makes the peak
GEMMA2_SMALL = dict(model_type="gemma2", hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=2048,
                    max_position_embeddings=8192, sliding_window=4096)
# name: (model: a registry id for its miniature ("mini:ID") or its real config ("ID"), or a config dict,
#        method, sequence length, batch, gradient checkpointing, lora dropout[, gradient accumulation])
CASES = {
    "qwen3-mini-full-256": ("mini:Qwen/Qwen3-0.6B", "full", 256, 2, False, 0.05),
    "qwen3-mini-full-1024": ("mini:Qwen/Qwen3-0.6B", "full", 1024, 2, False, 0.05),
    "qwen3-mini-lora-1024": ("mini:Qwen/Qwen3-0.6B", "lora", 1024, 2, False, 0.05),
    "llama-small-lora-256": (LLAMA_SMALL, "lora", 256, 2, False, 0.05),
    "llama-small-lora-1024": (LLAMA_SMALL, "lora", 1024, 2, False, 0.05),
    "llama-small-full-256": (LLAMA_SMALL, "full", 256, 2, False, 0.05),
    "llama-small-full-1024": (LLAMA_SMALL, "full", 1024, 2, False, 0.05),
    "llama-small-lora-1024-gc": (LLAMA_SMALL, "lora", 1024, 2, True, 0.05),
    "llama-small-full-1024-gc": (LLAMA_SMALL, "full", 1024, 2, True, 0.05),
    "llama-small-lora-1024-nodrop": (LLAMA_SMALL, "lora", 1024, 2, False, 0.0),
    "llama-small-qlora-1024": (LLAMA_SMALL, "qlora", 1024, 2, False, 0.05),
    # bfloat16 on the CPU too (a name ending in -bf16): LoRA adapters compute in the stream's dtype
    "llama-small-lora-1024-bf16": (LLAMA_SMALL, "lora", 1024, 2, False, 0.05),
    "llama-small-lora-1024-nodrop-bf16": (LLAMA_SMALL, "lora", 1024, 2, False, 0.0),
    # mixture of experts: LoRA on the fused experts (which peft adapts without dropout)
    "qwen3moe-small-lora-512": (QWEN3_MOE_SMALL, "lora", 512, 2, False, 0.0),
    "qwen3moe-small-lora-512-gc": (QWEN3_MOE_SMALL, "lora", 512, 2, True, 0.0),
    "qwen3moe-small-full-512": (QWEN3_MOE_SMALL, "full", 512, 2, False, 0.0),
    # Gemma-2: eager attention with soft-capped scores, two kinds of masks (sliding-window and full layers)
    "gemma2-small-full-1024": (GEMMA2_SMALL, "full", 1024, 2, False, 0.05),
    "gemma2-small-lora-1024-gc": (GEMMA2_SMALL, "lora", 1024, 2, True, 0.05),
    "gemma2-small-full-1024-bf16": (GEMMA2_SMALL, "full", 1024, 2, False, 0.05),
    "gemma2-small-lora-1024-gc-bf16": (GEMMA2_SMALL, "lora", 1024, 2, True, 0.05),
    # GPU sizes
    "qwen3-0.6b-full-1024x4": ("Qwen/Qwen3-0.6B", "full", 1024, 4, False, 0.05),
    "qwen3-0.6b-full-4096x2": ("Qwen/Qwen3-0.6B", "full", 4096, 2, False, 0.05),
    "qwen3-0.6b-lora-1024x4": ("Qwen/Qwen3-0.6B", "lora", 1024, 4, False, 0.05),
    "qwen3-0.6b-lora-4096x2": ("Qwen/Qwen3-0.6B", "lora", 4096, 2, False, 0.05),
    "qwen3-0.6b-lora-4096x2-nodrop": ("Qwen/Qwen3-0.6B", "lora", 4096, 2, False, 0.0),
    "qwen3-0.6b-lora-4096x4-gc": ("Qwen/Qwen3-0.6B", "lora", 4096, 4, True, 0.05),
    "qwen3-0.6b-full-4096x4-gc": ("Qwen/Qwen3-0.6B", "full", 4096, 4, True, 0.05),
    "llama-medium-full-2048x4": (LLAMA_MEDIUM, "full", 2048, 4, False, 0.05),
    "llama-medium-lora-2048x4": (LLAMA_MEDIUM, "lora", 2048, 4, False, 0.05),
    "llama-medium-full-2048x2-accum2": (LLAMA_MEDIUM, "full", 2048, 2, False, 0.05, 2),
    "qwen3-0.6b-lora-8192x1": ("Qwen/Qwen3-0.6B", "lora", 8192, 1, False, 0.05),
    "qwen3-1.7b-lora-2048x4": ("Qwen/Qwen3-1.7B", "lora", 2048, 4, False, 0.05),
    "qwen3-1.7b-full-2048x2-gc": ("Qwen/Qwen3-1.7B", "full", 2048, 2, True, 0.05),
}
CPU_CASES = [name for name in CASES if "mini" in name or "small" in name]
GPU_CASES = [name for name in CASES if name not in CPU_CASES or name.endswith("-1024")]


class LiveBytes:
    """Peak bytes of live tensors while active: every tensor an operator returns is counted once per storage
    until that storage is freed; `track` adds tensors made before (parameters)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    tracker.track(t)
                return out

        self.mode, self.live, self.now, self.peak = _Mode(), {}, 0, 0

    def track(self, t) -> None:
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return
        self.live[key] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key) -> None:
        self.now -= self.live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.now


def model_config(spec):
    from transformers import AutoConfig

    from swiftlike.models.loader import miniature_config, model_config as registry_config

    if isinstance(spec, dict):
        values = dict(spec)
        return AutoConfig.for_model(values.pop("model_type"), **values)
    if spec.startswith("mini:"):
        return miniature_config(spec[5:])
    return registry_config(spec)


def device_dtype(device: str) -> str:
    """The dtype a case measures in by default: float32 on the CPU, bfloat16 on a GPU."""
    return "float32" if device == "cpu" else "bfloat16"


def case_dtype(name: str, device: str) -> str:
    """The dtype a case measures in: bfloat16 for names ending in -bf16, else the device's default."""
    return "bfloat16" if name.endswith("-bf16") else device_dtype(device)


def measure(spec, method: str, seq_len: int, batch: int, checkpointing: bool = False, dropout: float = 0.05,
            accumulation: int = 1, device: str = "cpu", dtype: str | None = None) -> dict:
    """Measured and estimated peak (bytes) of the second of two training steps (in `dtype`, by default float32
    on the CPU and bfloat16 on a GPU)."""
    from unittest import mock

    # the run goes where it is measured: WB_DEVICE (a CPU measurement on a machine with a GPU too)
    with tempfile.TemporaryDirectory(prefix="wb-memplan-") as work, mock.patch.dict(os.environ, WB_DEVICE=device):
        return _measure(Path(work), spec, method, seq_len, batch, checkpointing, dropout, accumulation, device,
                        dtype or device_dtype(device))


class _Tokenizer:
    """What training reads of a tokenizer: the padding id and how many tokens it has (random ids need no more)."""
    pad_token_id = 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def _measure(work: Path, spec, method: str, seq_len: int, batch: int, checkpointing: bool, dropout: float,
             accumulation: int, device: str, dtype_name: str) -> dict:

    import torch
    from transformers import AutoModelForCausalLM

    from swiftlike.config import SFTConfig
    from swiftlike.data.collate import collate_padding_free
    from swiftlike.pipelines.sft import build_trainable
    from swiftlike.train.memory_plan import Setup, architecture, plan
    from swiftlike.train.trainer import LoopSettings, Trainer

    dtype = getattr(torch, dtype_name)
    config = model_config(spec)
    torch.manual_seed(0)
    base = str(work / "base")
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(base)
    gc.collect()
    cfg = SFTConfig(model=base, dataset=["-"], output_dir=str(work / "out"),
                    full=method == "full", qlora=method == "qlora", lora=method == "lora",
                    gradient_checkpointing=checkpointing, lora_dropout=dropout, torch_dtype=dtype_name)
    vocab = config.get_text_config().vocab_size
    tokenizer = _Tokenizer(vocab)
    model = build_trainable(cfg, tokenizer, base, None, dtype)
    g = torch.Generator().manual_seed(0)
    n = batch * accumulation
    rows = [{"input_ids": torch.randint(0, vocab, (seq_len,), generator=g).tolist()} for _ in range(2 * n)]
    for r in rows:
        r["labels"] = list(r["input_ids"])
    settings = LoopSettings(output_dir=cfg.output_dir, learning_rate=1e-4, max_steps=2, num_train_epochs=1,
                            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                            lr_scheduler_type="constant", warmup_ratio=0.0, warmup_steps=0, weight_decay=0.0,
                            max_grad_norm=1.0, seed=0, logging_steps=1, save_steps=10 ** 9, save_total_limit=None,
                            report_to="none")
    trainer = Trainer(model, tokenizer, rows, collate_padding_free, settings, "{}")
    batches = [[collate_padding_free(rows[i * n + k * batch:i * n + (k + 1) * batch]) for k in range(accumulation)]
               for i in range(2)]
    gc.collect()
    started = time.perf_counter()
    live = LiveBytes()
    marks: list = []  # memory after each decoder layer's forward and after the decoder (second step only)
    now = (lambda: live.now) if device == "cpu" else torch.cuda.memory_allocated
    used = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = used.get_decoder()
    for layer in list(decoder.layers) + [decoder]:
        layer.register_forward_hook(lambda *_: marks.append(now()))
    if device == "cpu":
        seen = set()
        with live.mode:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    live.track(t)
            for q in model.parameters():  # QLoRA's quantization constants live beside the 4-bit weights
                state = getattr(q, "quant_state", None)
                if state is not None:
                    for t in (state.absmax, state.code, *((state.state2.absmax, state.state2.code)
                                                          if state.nested else ())):
                        live.track(t)
            weights = live.now
            trainer.train_step(batches[0])
            gc.collect()
            states = live.now
            live.reset_peak()
            marks.clear()
            trainer.train_step(batches[1])
            peak, reserved = live.peak, None
    else:
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated()
        trainer.train_step(batches[0])
        torch.cuda.synchronize()
        states = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        marks.clear()
        trainer.train_step(batches[1])
        torch.cuda.synchronize()
        peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    seconds = time.perf_counter() - started
    attn = used.config._attn_implementation  # the kernel the run above used (Gemma-2's soft-capping: eager)
    estimate = plan(architecture(config), Setup(task="sft", method=method, dtype=dtype_name, batch=batch,
                                                seq_len=seq_len, accumulation=accumulation,
                                                gradient_checkpointing=checkpointing, lora_dropout=dropout,
                                                device=device, attn=attn))
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    forward = marks[:len(decoder.layers) + 1]  # the recomputation under checkpointing marks again
    return {"weights": weights, "weights_and_states": states, "peak": peak, "reserved": reserved,
            "layers": [b - a for a, b in zip(forward, forward[1:-1])], "decoder_out": forward[-1] - states,
            "estimate_layer": estimate.detail["one_layer"], "estimate_decoder": estimate.detail["layers"],
            "estimate_weights": estimate.part("weights"),
            "estimate_weights_and_states": estimate.part("weights") + estimate.part("optimizer"),
            "estimate": estimate.peak, "error": estimate.peak / peak - 1, "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cases", nargs="+", help=f"default: all for the device; any of {', '.join(CASES)}")
    parser.add_argument("--json", help="also append one JSON object per case to this file")
    args = parser.parse_args()
    names = args.cases or (CPU_CASES if args.device == "cpu" else GPU_CASES)
    print("| case | method | tokens | measured MiB | estimated MiB | error |")
    print("|---|---|---|---|---|---|")
    for name in names:
        spec, method, seq_len, batch, checkpointing, dropout, *accumulation = CASES[name]
        try:
            r = measure(*CASES[name], device=args.device, dtype=case_dtype(name, args.device))
        except Exception as e:  # one case failing (a missing package) does not stop the others
            print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} |", flush=True)
            continue
        r.update(case=name, device=args.device)
        print(f"| {name} | {method}{' + gc' if checkpointing else ''} | {batch} x {seq_len}"
              f"{f' x {accumulation[0]}' if accumulation else ''} | "
              f"{r['peak'] / 2**20:,.1f} | {r['estimate'] / 2**20:,.1f} | {r['error'] * 100:+.1f}% |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
