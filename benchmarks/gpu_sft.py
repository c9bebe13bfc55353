"""GPU SFT throughput: `wb sft` vs TRL's SFTTrainer on Qwen3-0.6B- and Qwen3-4B-shaped models, bf16, packed.

    python benchmarks/gpu_sft.py [--models 0.6b,4b] [--lengths 2048,8192] [--modes lora,full] [--steps 12]
                                 [--warmup 3] [--tokens_per_step 8192] [--only ours|trl] [--json PATH] [--smoke]
                                 [--torch_compile] [--trl_torch_compile]

Models: the real Qwen3-0.6B / Qwen3-4B configs (swiftlike's registry), random weights made with transformers and
saved once in bf16 to a scratch directory with the real Qwen3 tokenizer; both sides load that directory.
Data: benchmarks/common.chat_rows (lognormal answer lengths), scaled with the sequence length L: mean answer
115 * L / 2048 tokens, capped at min(850 * L / 2048, L - 128), so at L = 8192 single conversations run to ~3,400
tokens; enough rows for 1.3x the tokens the run trains.
Settings, identical on both sides: bf16 weights, packed rows of up to L tokens (ours: packing + padding_free; TRL:
packing=True, bfd, which implies padding_free), tokens_per_step // L rows per step concatenated into one row,
assistant-only loss (TRL: assistant_only_loss=True), LoRA r16 alpha 32 dropout 0 on all linear layers (lr 1e-4)
or full fine-tuning (lr 1e-5), AdamW, gradient checkpointing only for 4B full (both sides), no checkpoint writing.
Liger's kernels (RMSNorm, SwiGLU, RoPE) when liger_kernel imports: TRL use_liger_kernel=True; ours by its default
(SFTConfig.use_liger_kernel: on for CUDA training when installed). If a side's first run fails with them, it is run
once more without them, and if that works the side goes on without Liger (the JSON says so).
TRL's attention: flash_attention_2 if flash_attn imports, else sdpa with the block-diagonal mask transformers builds
for packed rows (--trl_attn to choose); ours picks its own (torch varlen_attn on CUDA; printed per run).

Each run is its own process (its GPU memory peak is its own). Measured per run:
- tokens/s: non-padding tokens processed per second over the steps after --warmup (the clock is read, after
  torch.cuda.synchronize, at the end of every optimizer step: ours wraps Trainer.train_step, TRL a callback's
  on_step_end), so start-up, data preparation, kernel compilation and the first steps are excluded; every step's
  seconds are in the JSON too (`step_seconds`, the first from the process's start);
- MFU = model FLOPs / seconds / the card's bf16 matmul rate, measured in the same run (8192^3 torch.matmul,
  mean of 10 after 3 warm-ups). Model FLOPs per timed step = c * N * tokens + 6 * layers * q_dim * sum(s_i^2)
  over that step's sequences (causal attention, forward + backward), with N the matmul weights (decoder linears
  plus the output layer), c = 6 for full fine-tuning, and for LoRA c = 4 (frozen weights: forward and backward to
  activations) plus 6 * N_lora. `mfu_6n` uses c = 6 for LoRA too (the usual convention). Recomputation under
  gradient checkpointing is not counted (it is not model FLOPs), and the output layer counts at every token on both
  sides (ours runs it only where there are labels), so the MFU ratio equals the tokens/s ratio;
- peak GPU memory: torch.cuda.max_memory_allocated and max_memory_reserved of the run's process;
- ours: where a timed step's time goes (`phase_ms`, mean a step): forward and backward (the fused loss, which computes
  its gradients in forward, within it), the loss alone, and the optimizer step (clipping included), on the GPU's
  timeline between CUDA events (wall time on the CPU); the rest of a step is host work between them.
Runs go in order of importance (4B LoRA at the shortest length first) and stop when --budget_s is spent.
--torch_compile: ours with `--torch_compile` (every decoder layer compiled, Liger's kernels off by its default);
--trl_torch_compile: TRL with TrainingArguments.torch_compile (the whole model; Liger's kernels as without it). On
an H100 (2026-11-27) TRL compiled was slower than TRL with Liger alone (0.6B full: 7,027 against 18,265 tokens/s),
so TRL's best is not compiled. The compilation falls in the untimed warm-up steps.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (QWEN3_SHAPES, build_config_model_dir, chat_rows, gpu_peak_gib,  # noqa: E402
                    qwen3_shape_config, scratch_dir, write_jsonl)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = QWEN3_SHAPES
TINY = dict(qwen3_shape_config("0.6b"), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
LORA = dict(r=16, alpha=32, dropout=0.0)
RUN_S = 40  # what one run's process takes at least on an H100 (23-50 s on 2026-11-26): none starts with less left
IGNORE = -100


def shape_config(name: str) -> dict:
    return dict(TINY) if name == "tiny" else qwen3_shape_config(name)


# ---------------------------------------------------------------------------------------------- FLOPs
def flop_terms(cfg: dict, mode: str) -> dict:
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    n = layers * (h * q + 2 * h * kv + q * h + 3 * h * i) + h * v  # matmul weights, output layer included
    r = LORA["r"]
    n_lora = layers * r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)) if mode == "lora" else 0
    per_token = 6.0 * n if mode == "full" else 4.0 * n + 6.0 * n_lora
    return {"n_matmul": n, "n_lora": n_lora, "per_token": per_token, "per_token_6n": 6.0 * (n + n_lora),
            "attn_per_sq": 6.0 * layers * q}


# ---------------------------------------------------------------------------------------------- children
def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seq_lengths(batch: dict) -> list[int]:
    """Lengths of the sequences in a collated batch (padding-free: from the position_ids restarts)."""
    if "seq_lens" in batch:
        return [int(x) for x in batch["seq_lens"].tolist()]
    if "position_ids" in batch and "attention_mask" not in batch:
        lengths = []
        for row in batch["position_ids"].tolist():
            for p in row:
                if p == 0 or not lengths:
                    lengths.append(0)
                lengths[-1] += 1
        return lengths
    if "attention_mask" in batch:
        return [int(x) for x in batch["attention_mask"].sum(-1).tolist()]
    return [batch["input_ids"].shape[-1]] * batch["input_ids"].shape[0]


def step_record(batches: list[dict], label_key: str) -> dict:
    lens = [s for b in batches for s in seq_lengths(b)]
    trained = sum(int((b[label_key] != IGNORE).sum()) for b in batches if label_key in b)
    return {"t": time.perf_counter(), "tokens": sum(lens), "trained": trained, "sum_sq": sum(s * s for s in lens),
            "seqs": len(lens)}


def run_ours(a, out: str, log: list) -> dict:
    import swiftlike as wb
    from swiftlike.train import loss
    from swiftlike.train import trainer as T

    original = T.Trainer.train_step

    profiler = StepProfiler(a, "ours")
    phases = PhaseClock()
    loss.linear_cross_entropy = phases.wrap("loss", loss.linear_cross_entropy)  # (CausalLMLoss calls it by name)

    def timed(self, micro_batches):
        if not hasattr(self.engine.step, "__wrapped__"):  # (the engine's first step)
            self.engine.forward_backward = phases.wrap("forward_backward", self.engine.forward_backward)
            self.engine.step = phases.wrap("optimizer", self.engine.step)
        profiler.before(len(log))
        result = original(self, micro_batches)
        _sync()
        phases.end_step()
        log.append(step_record(micro_batches, "targets"))
        profiler.after(len(log))
        return result

    T.Trainer.train_step = timed
    T.Trainer.save = lambda self: None  # no checkpoint writing (TRL: save_strategy="no")
    kw = dict(model=a.model_dir, template="qwen3", dataset=[a.data], max_steps=a.steps,
              per_device_train_batch_size=a.batch, learning_rate=1e-4 if a.mode == "lora" else 1e-5,
              max_length=a.seq, torch_dtype=a.dtype, padding_free=True, packing=True,
              gradient_checkpointing=a.gc == "on", logging_steps=a.steps, save_steps=10 ** 9, output_dir=out,
              dataset_cache=False)
    if a.mode == "lora":
        kw.update(lora=True, lora_rank=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                  target_modules=["all-linear"])
    else:
        kw.update(full=True)
    if not a.liger:
        kw["use_liger_kernel"] = False  # else its default: Liger's kernels on CUDA when liger-kernel is installed
    if a.logits_per_chunk:  # the fused loss's chunk (train/loss.py), frozen or trained output layer alike
        loss.LOGITS_PER_CHUNK = a.logits_per_chunk
    seen = _Tee(sys.stdout)
    with contextlib.redirect_stdout(seen):
        result = wb.sft(torch_compile=a.torch_compile, **kw)
    said = {k: line.split(":", 1)[1].strip() for line in seen.text.splitlines()
            for k in ("kernels", "attention", "torch_compile") if line.startswith(f"[wb] {k}:")}
    return {"liger": said.get("kernels", "not said (off CUDA)"), "logits_per_chunk": loss.LOGITS_PER_CHUNK,
            "phase_ms": phases.mean(a.warmup),
            "attn_implementation": said.get("attention"), "torch_compile": said.get("torch_compile"),
            "total_train_seconds": result.metrics.get("train_seconds"), "final_loss": result.metrics.get("final_loss")}


class PhaseClock:
    """Time spent in named calls, per step: on CUDA between events on the GPU's timeline (read after the step's
    synchronisation), elsewhere by the wall clock."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.marks: list[tuple] = []          # (name, start, end) of the step under way
        self.steps: list[dict] = []           # milliseconds by name, a finished step each

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = self._now()
            out = fn(*args, **kwargs)
            self.marks.append((name, start, self._now()))
            return out

        return timed

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def end_step(self) -> None:
        ms: dict = {}
        for name, start, end in self.marks:
            ms[name] = ms.get(name, 0.0) + (start.elapsed_time(end) if self.cuda else 1000 * (end - start))
        self.steps.append(ms)
        self.marks = []

    def mean(self, skip: int) -> dict:
        timed = self.steps[skip:]
        names = sorted({n for step in timed for n in step})
        return {n: round(sum(step.get(n, 0.0) for step in timed) / len(timed), 2) for n in names} if timed else {}


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


class _Tee(io.TextIOBase):
    """Passes writes through to `stream` and keeps them (to read the start-up lines of `wb sft`)."""

    def __init__(self, stream):
        self.stream, self.text = stream, ""

    def write(self, s: str) -> int:
        self.text += s
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


def run_trl(a, out: str, log: list) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    liger = bool(a.liger) and importlib.util.find_spec("liger_kernel") is not None
    attn = a.trl_attn
    if attn == "auto":
        attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") is not None else "sdpa"
    bf16 = a.dtype == "bfloat16"
    # the bundled tokenizer's Qwen3 template is a revision TRL cannot patch for assistant_only_loss: give TRL its own
    # Qwen3 training template (the official one plus {% generation %} markers; the same text for these rows)
    import trl

    template = Path(trl.__file__).parent / "chat_templates" / "qwen3_training.jinja"
    args = SFTConfig(chat_template_path=str(template) if template.is_file() else None, output_dir=out,
                     max_steps=a.steps, per_device_train_batch_size=a.batch,
                     learning_rate=1e-4 if a.mode == "lora" else 1e-5, max_length=a.seq, packing=True,
                     packing_strategy="bfd", padding_free=True, assistant_only_loss=True,
                     gradient_checkpointing=a.gc == "on", logging_steps=a.steps, save_strategy="no", report_to="none",
                     use_cpu=not cuda, bf16=bf16, fp16=False, dataloader_num_workers=0, seed=42,
                     use_liger_kernel=liger, torch_compile=a.torch_compile,  # (--trl_torch_compile)
                     model_init_kwargs={"dtype": a.dtype, "attn_implementation": attn})
    peft_config = None
    if a.mode == "lora":
        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=a.model_dir, args=args, peft_config=peft_config,
                         train_dataset=load_dataset("json", data_files=a.data)["train"])
    pending: list[dict] = []
    original = trainer.training_step

    def counting(model, inputs, *rest, **kw):
        pending.append(inputs)
        return original(model, inputs, *rest, **kw)

    trainer.training_step = counting

    profiler = StepProfiler(a, "trl")

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            profiler.before(len(log))

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            log.append(step_record(pending, "labels"))
            pending.clear()
            profiler.after(len(log))

    trainer.add_callback(StepClock())
    t = time.perf_counter()
    trainer.train()
    return {"liger": liger if a.liger else False, "attn_implementation": attn,
            "total_train_seconds": time.perf_counter() - t,
            "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)}


class StepProfiler:
    """With --profile DIR: torch.profiler over PROFILED_STEPS optimizer steps after the warm-up, written to
    DIR/SIDE-MODEL-L-MODE.txt: per step the wall time, the GPU's kernel time (busy share), kernel launches and
    device-to-host reads (aten::_local_scalar_dense: .item(), .tolist(), int() of a GPU tensor, each one a wait
    for the GPU); then the operators by GPU time and by CPU time. Profiled runs are slower: not benchmark figures."""

    def __init__(self, a, side: str):
        self.a, self.side, self.prof, self.t = a, side, None, 0.0
        self.first = max(1, a.warmup)

    def before(self, done: int) -> None:
        if self.a.profile and done == self.first:
            import torch
            from torch.profiler import ProfilerActivity, profile

            _sync()
            cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            self.prof = profile(activities=[ProfilerActivity.CPU, *cuda])
            self.prof.__enter__()
            self.t = time.perf_counter()

    def after(self, done: int) -> None:
        if self.prof is None or done < self.first + PROFILED_STEPS:
            return
        _sync()
        wall = (time.perf_counter() - self.t) / PROFILED_STEPS
        self.prof.__exit__(None, None, None)
        events = self.prof.events()
        kernels = [e for e in events if e.device_type.name == "CUDA"]
        busy = sum(e.device_time for e in kernels) / 1e6 / PROFILED_STEPS  # us -> s, per step
        reads = sum(1 for e in events if e.name == "aten::_local_scalar_dense") / PROFILED_STEPS
        table = self.prof.key_averages()
        head = (f"{self.side} {self.a.model_dir} L={self.a.seq} {self.a.mode}: per step {wall * 1e3:.1f} ms wall, "
                f"{busy * 1e3:.1f} ms of GPU kernels ({100 * busy / wall:.0f}% busy), "
                f"{len(kernels) / PROFILED_STEPS:.0f} kernels, {reads:.0f} device-to-host reads\n")
        print("[profile] " + head.strip(), flush=True)
        name = f"{self.side}-{Path(self.a.model_dir).name}-{self.a.seq}-{self.a.mode}.txt"
        Path(self.a.profile).mkdir(parents=True, exist_ok=True)
        Path(self.a.profile, name).write_text(
            head + "\nby GPU time\n" + _table(table, "self_device_time_total")
            + "\nby CPU time\n" + _table(table, "self_cpu_time_total"))
        self.prof = None


PROFILED_STEPS = 3


def _table(averages, key: str) -> str:
    return averages.table(sort_by=key, row_limit=30, max_name_column_width=70)


def child(a) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    log: list[dict] = []
    t0 = time.perf_counter()
    res: dict = {}
    try:
        with tempfile.TemporaryDirectory() as out:
            res = (run_ours if a.child == "ours" else run_trl)(a, out, log)
    except Exception as e:  # noqa: BLE001 (reported, with what was measured before it)
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        res = {"error": f"{type(e).__name__}: {str(e)[:800]}", "oom": oom}
        import traceback

        traceback.print_exc()
    res["wall_seconds"] = time.perf_counter() - t0
    res["steps_logged"] = len(log)
    timed = log[a.warmup:]
    if len(log) > a.warmup and len(timed) > 0:
        seconds = timed[-1]["t"] - log[a.warmup - 1]["t"] if a.warmup > 0 else timed[-1]["t"] - t0
        res.update(timed_steps=len(timed), seconds=seconds,
                   tokens=sum(s["tokens"] for s in timed), trained_tokens=sum(s["trained"] for s in timed),
                   sum_sq=sum(s["sum_sq"] for s in timed), sequences=sum(s["seqs"] for s in timed),
                   first_step_seconds=log[0]["t"] - t0,
                   # each step's seconds, warm-up included: a slow run shows whether every step is slow or a few
                   step_seconds=[round(now["t"] - before["t"], 4) for before, now in zip([{"t": t0}, *log], log)])
        res["tokens_per_second"] = res["tokens"] / seconds
        res["trained_tokens_per_second"] = res["trained_tokens"] / seconds
    res.update(gpu_peak_gib())
    print("RESULT " + json.dumps(res), flush=True)


def prep(a) -> None:
    """Build the models (random weights, saved in --dtype) and measure the matmul rate; report versions."""
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    built = {}
    for spec in a.build:
        name, path = spec.split("=", 1)
        path = Path(path)
        if not (path / "config.json").is_file():
            t = time.perf_counter()
            build_config_model_dir(path, shape_config(name), a.dtype)
            built[name] = {"matmul_weights": flop_terms(shape_config(name), "full")["n_matmul"],
                           "seconds": time.perf_counter() - t}
    if cuda:
        n = 8192
        x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            torch.matmul(x, y)
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(x, y)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        rate, what = 2 * n ** 3 / (sum(times) / len(times)), "bf16 8192^3 torch.matmul, mean of 10 after 3 warm-ups"
        device = torch.cuda.get_device_name()
        del x, y
    else:
        from common import matmul_flops

        rate, what, device = matmul_flops(1024), "fp32 1024^3 torch.matmul on CPU, best of 10", "cpu"
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    for pkg in ("peft", "trl", "datasets", "liger_kernel", "torchao", "flash_attn", "accelerate"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg.replace("_", "-")) if importlib.util.find_spec(pkg) else None
        except Exception:  # noqa: BLE001
            versions[pkg] = "present (version unknown)" if importlib.util.find_spec(pkg) else None
    print("RESULT " + json.dumps({"matmul_flops": rate, "matmul": what, "device": device, "built": built,
                                  "versions": versions}), flush=True)


# ---------------------------------------------------------------------------------------------- parent
def launch(args: list[str], timeout: float) -> dict:
    """Run this script as a child; its RESULT line, or an error record (failure, timeout) with its stderr tail."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                              timeout=max(1.0, timeout))
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = "timeout"
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("RESULT ")), None)
    res = json.loads(line[7:]) if line else {"error": f"exit {rc}, no result"}
    if rc == "timeout":
        res["error"] = f"timed out after {timeout:.0f}s"
    res["process_seconds"] = time.perf_counter() - t
    if "error" in res:
        res["stderr_tail"] = err[-2500:]
    return res


def plan(models: list[str], lengths: list[int], modes: list[str]) -> list[tuple[str, int, str]]:
    """Configurations in order of importance: shorter lengths first; within one, 4B LoRA, then 0.6B LoRA,
    0.6B full, 4B full."""
    rank = {("4b", "lora"): 0, ("0.6b", "lora"): 1, ("tiny", "lora"): 1, ("0.6b", "full"): 2, ("tiny", "full"): 2,
            ("4b", "full"): 3}
    runs = [(m, L, mode) for L in lengths for m in models for mode in modes]
    return sorted(runs, key=lambda r: (r[1], rank.get((r[0], r[2]), 9)))


def data_for(work: Path, seq: int, steps: int, tokens_per_step: int) -> Path:
    path = work / f"chat-{seq}.jsonl"
    if not path.is_file():
        scale = seq / 2048
        mean, cap = 115 * scale, int(min(850 * scale, seq - 128))
        needed = 1.3 * steps * max(tokens_per_step, seq)
        n = int(math.ceil(needed / (mean + 40))) + 16
        write_jsonl(chat_rows(n, seed=seq, mean_tokens=mean, max_tokens=cap), path)
    return path


def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def describe(res: dict) -> str:
    if "skipped" in res:
        return f"skipped: {res['skipped']}"
    if not res.get("tokens_per_second"):
        return f"ERROR {res.get('error', '?')[:300]}\n{res.get('stderr_tail', '')[-1500:]}"
    pct = (lambda k: fmt(100 * res[k] if k in res else None))
    return (f"{res['tokens_per_second']:,.1f} tok/s (loss tokens {fmt(res.get('trained_tokens_per_second'))}/s), "
            f"MFU {pct('mfu')}% (6N {pct('mfu_6n')}%), peak {fmt(res.get('peak_allocated_gib'), '.2f')} GiB "
            f"allocated / {fmt(res.get('peak_reserved_gib'), '.2f')} GiB reserved, {res.get('timed_steps')} timed "
            f"steps of {res.get('steps_logged')}, mean sequence {fmt(res.get('mean_seq_len'), '.0f')} tokens, "
            f"liger {res.get('liger')}, process {res['process_seconds']:.0f}s"
            + (f", torch_compile: {res['torch_compile']}" if res.get("torch_compile") else "")
            + (", ms a step: " + ", ".join(f"{k} {v:.1f}" for k, v in res["phase_ms"].items())
               if res.get("phase_ms") else "")
            + (f", ERROR after the timed steps: {res['error'][:200]}" if res.get("error") else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="0.6b,4b", help="comma-separated: 0.6b, 4b")
    ap.add_argument("--lengths", default="2048,8192", help="comma-separated sequence lengths (packed row size)")
    ap.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing (at least 1)")
    ap.add_argument("--tokens_per_step", type=int, default=8192,
                    help="packed rows per step = this // sequence length (at least 1)")
    ap.add_argument("--gc", choices=("auto", "on", "off"), default="auto",
                    help="gradient checkpointing, both sides (auto: only for 4B full)")
    ap.add_argument("--trl_attn", default="auto",
                    help="TRL's attn_implementation (auto: flash_attention_2 if flash_attn imports, else sdpa)")
    ap.add_argument("--only", choices=("ours", "trl"), help="run one side only")
    ap.add_argument("--torch_compile", action="store_true", help="ours with --torch_compile (decoder layers compiled)")
    ap.add_argument("--trl_torch_compile", action="store_true", help="TRL with its torch_compile (the whole model)")
    ap.add_argument("--logits_per_chunk", type=_positive, default=0,
                    help="ours: logits per chunk of the fused linear cross-entropy (default: train/loss.py's, 2^27)")
    ap.add_argument("--budget_s", type=float, default=330.0,
                    help="stop starting runs once this many seconds have passed (the rest are reported skipped)")
    ap.add_argument("--json", help="write all results here (rewritten after every run)")
    ap.add_argument("--profile", help="profile 3 steps after the warm-up of every run into this folder (where the "
                                      "time goes; profiled runs are slower, so their figures are not benchmark ones)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny config (hidden 64, 2 layers), seq 256, 3 steps, fp32 on CPU: proves the script works")
    # child-only flags
    ap.add_argument("--child", choices=("ours", "trl", "prep"), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    ap.add_argument("--liger", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs="*", default=[], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "prep":
        return prep(a)
    if a.child:
        return child(a)

    if a.smoke:
        models, lengths, a.steps, a.warmup, a.tokens_per_step = ["tiny"], [256], 3, 1, 512
        dtype, cpu = "float32", True
    else:
        models, lengths, dtype, cpu = a.models.split(","), [int(x) for x in a.lengths.split(",")], "bfloat16", False
        unknown = [m for m in models if m not in SHAPES]
        if unknown:
            sys.exit(f"--models: unknown {unknown}; choose from {sorted(SHAPES)}")
    modes = a.modes.split(",")
    a.warmup = max(1, min(a.warmup, a.steps - 1))
    if a.profile:
        a.steps = max(a.steps, a.warmup + PROFILED_STEPS)
    start = time.perf_counter()
    deadline = start + a.budget_s
    env_note = {}
    if cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run stays on the CPU
    sides = [a.only] if a.only else ["ours", "trl"]
    missing_trl = [p for p in ("trl", "datasets") if importlib.util.find_spec(p) is None]
    if "trl" in sides and missing_trl:
        env_note["trl"] = f"TRL side not run: {', '.join(missing_trl)} not installed"
        print(f"[gpu_sft] {env_note['trl']}", flush=True)
    if importlib.util.find_spec("liger_kernel") is None:
        env_note["liger"] = "liger_kernel not installed: TRL runs without Liger's kernels"
        print(f"[gpu_sft] {env_note['liger']}", flush=True)

    work = scratch_dir("wb-gpu-sft-")
    dirs = {m: work / f"model-{m}" for m in models}
    prep_res = launch(["--child", "prep", "--dtype", dtype, "--build", *[f"{m}={d}" for m, d in dirs.items()]],
                      timeout=max(60.0, deadline - time.perf_counter()))
    if "error" in prep_res:
        print(json.dumps(prep_res, indent=1))
        sys.exit("[gpu_sft] preparation failed (model build or matmul rate)")
    rate = prep_res["matmul_flops"]
    print(f"[gpu_sft] device {prep_res['device']}; matmul rate {rate / 1e12:.1f} TFLOP/s ({prep_res['matmul']}); "
          f"versions {json.dumps(prep_res['versions'])}; models built {json.dumps(prep_res['built'])} "
          f"({time.perf_counter() - start:.0f}s so far)", flush=True)

    report = {"settings": {"steps": a.steps, "warmup": a.warmup, "tokens_per_step": a.tokens_per_step,
                           "dtype": dtype, "lora": LORA, "gc": a.gc, "trl_attn": a.trl_attn, "smoke": a.smoke,
                           "torch_compile": a.torch_compile, "trl_torch_compile": a.trl_torch_compile,
                           "budget_s": a.budget_s},
              "machine": prep_res, "notes": env_note, "runs": [], "pairs": []}

    def save() -> None:
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1) + "\n")

    liger_state = {"ours": "untried", "trl": "untried"}
    for m, seq, mode in plan(models, lengths, modes):
        cfg = shape_config(m)
        terms = flop_terms(cfg, mode)
        batch = max(1, a.tokens_per_step // seq)
        gc = a.gc == "on" or (a.gc == "auto" and m == "4b" and mode == "full")
        data = data_for(work, seq, a.steps, a.tokens_per_step)
        pair = {}
        for side in sides:
            base = {"model": m, "seq": seq, "mode": mode, "side": side, "batch_rows": batch,
                    "gradient_checkpointing": gc}
            left = deadline - time.perf_counter()
            if side == "trl" and missing_trl:
                res = dict(base, skipped=env_note["trl"])
            elif left < RUN_S * (len(sides) - sides.index(side)):  # the pair's runs still to go fit, or none
                res = dict(base, skipped=f"budget spent ({a.budget_s:.0f}s)")
            else:
                args = ["--child", side, "--model-dir", str(dirs[m]), "--data", str(data), "--seq", str(seq),
                        "--mode", mode, "--batch", str(batch), "--steps", str(a.steps), "--warmup", str(a.warmup),
                        "--dtype", dtype, "--gc", "on" if gc else "off", "--trl_attn", a.trl_attn,
                        *(["--torch_compile"] if (a.trl_torch_compile if side == "trl" else a.torch_compile)
                          else []),
                        *(["--logits_per_chunk", str(a.logits_per_chunk)] if a.logits_per_chunk else []),
                        *(["--profile", str(Path(a.profile).resolve())] if a.profile else [])]
                use = "0" if liger_state[side] == "broken" else "1"
                res = dict(base, **launch([*args, "--liger", use], timeout=left))
                if use == "1" and liger_state[side] == "untried" and "liger" not in env_note:
                    if res.get("error") and not res.get("oom") and deadline - time.perf_counter() > 20:
                        # once per side: is Liger the cause? (then that side runs without it from here on)
                        print(f"[gpu_sft] {side} failed ({res['error'][:200]}); once again without Liger", flush=True)
                        retry = dict(base, **launch([*args, "--liger", "0"], timeout=deadline - time.perf_counter()))
                        retry["failure_with_liger"] = res["error"]
                        liger_state[side] = "broken" if retry.get("tokens_per_second") else "not the cause"
                        res = retry
                    elif res.get("tokens_per_second"):
                        liger_state[side] = "works"
            if res.get("tokens_per_second"):
                flops = terms["per_token"] * res["tokens"] + terms["attn_per_sq"] * res["sum_sq"]
                flops_6n = terms["per_token_6n"] * res["tokens"] + terms["attn_per_sq"] * res["sum_sq"]
                res["mfu"] = flops / res["seconds"] / rate
                res["mfu_6n"] = flops_6n / res["seconds"] / rate
                res["mean_seq_len"] = res["tokens"] / max(1, res["sequences"])
            res["flops"] = terms
            report["runs"].append(res)
            pair[side] = res
            print(f"[{m} L={seq} {mode} {side}] {describe(res)}", flush=True)
            save()
        if len(pair) == 2 and all(p.get("tokens_per_second") for p in pair.values()):
            o, t = pair["ours"], pair["trl"]
            ratios = {"model": m, "seq": seq, "mode": mode,
                      "throughput": o["tokens_per_second"] / t["tokens_per_second"]}
            for key in ("peak_allocated_gib", "peak_reserved_gib"):
                if o.get(key) and t.get(key):
                    ratios[key.replace("peak_", "memory_")] = o[key] / t[key]
            report["pairs"].append(ratios)
            print(f"[{m} L={seq} {mode}] ours/TRL: throughput {ratios['throughput']:.2f}x"
                  + (f", peak allocated {ratios['memory_allocated_gib']:.2f}x" if "memory_allocated_gib" in ratios
                     else "") + (f", reserved {ratios['memory_reserved_gib']:.2f}x" if "memory_reserved_gib" in ratios
                                 else ""), flush=True)
            save()
    report["total_seconds"] = time.perf_counter() - start
    save()
    print_table(report)


def print_table(report: dict) -> None:
    print("\n| model | L | mode | side | tokens/s | MFU | MFU (6N) | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        what = r.get("skipped") or (r.get("error", "")[:60] if not r.get("tokens_per_second") else None)
        if what:
            print(f"| {r['model']} | {r['seq']} | {r['mode']} | {r['side']} | {what} | | | | |")
            continue
        print(f"| {r['model']} | {r['seq']} | {r['mode']} | {r['side']} | {r['tokens_per_second']:,.0f} | "
              f"{100 * r['mfu']:.1f}% | {100 * r['mfu_6n']:.1f}% | {fmt(r.get('peak_allocated_gib'), '.1f')} | "
              f"{fmt(r.get('peak_reserved_gib'), '.1f')} |")
    for p in report["pairs"]:
        memory = p.get("memory_allocated_gib")
        verdict = "memory not measured (no GPU)" if memory is None else \
            "met" if p["throughput"] >= 2 and memory <= 1 else "not met"
        print(f"ours/TRL {p['model']} L={p['seq']} {p['mode']}: {p['throughput']:.2f}x tokens/s, "
              f"{fmt(memory, '.2f')}x peak allocated, {fmt(p.get('memory_reserved_gib'), '.2f')}x reserved "
              f"-> target (>=2x at <=1x peak allocated): {verdict}")
    for r in report["runs"]:
        if r["model"] == "4b" and r["mode"] == "lora" and r["side"] == "ours" and "mfu" in r:
            print(f"4B LoRA L={r['seq']} MFU {100 * r['mfu']:.1f}% (6N convention {100 * r['mfu_6n']:.1f}%) -> "
                  f"target >=45%: {'met' if r['mfu'] >= 0.45 else 'not met'} (by the 6N convention: "
                  f"{'met' if r['mfu_6n'] >= 0.45 else 'not met'})")
    print(f"total {report.get('total_seconds', 0):.0f}s; matmul rate {report['machine']['matmul_flops'] / 1e12:.1f} "
          f"TFLOP/s on {report['machine']['device']}")


if __name__ == "__main__":
    main()
