"""Shared pieces of the benchmarks: the miniature model, the synthetic chat data, the machine's matmul rate."""
from __future__ import annotations

import atexit
import functools
import json
import math
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[1] / "swiftlike" / "assets" / "tokenizers" / "qwen3"

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or had not but "
         "model data train token learning rate batch layer weight value network memory speed result paper method "
         "river mountain city garden window music color history science letter number question answer reason "
         "because however therefore example simple quickly carefully between during without within around").split()


def scratch_dir(prefix: str) -> Path:
    """A temporary directory removed when the benchmark process exits (models and checkpoints are large)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def build_model_dir(path: Path, hidden: int = 256, layers: int = 4, seed: int = 0) -> Path:
    """A randomly initialised Qwen3 of the given size with the real 151k-vocabulary tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if (path / "config.json").is_file():
        return path
    config = Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, tie_word_embeddings=True,
                         max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151645)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(path)
    return path


# Real Qwen3 shapes for GPU runs (benchmarks/gpu_sft.py, --model_shape of dpo_throughput.py and grpo_step.py)
QWEN3_SHAPES = {"0.6b": "Qwen/Qwen3-0.6B", "4b": "Qwen/Qwen3-4B"}


def qwen3_shape_config(shape: str) -> dict:
    """The real config of Qwen3-0.6B / Qwen3-4B (`shape` "0.6b" / "4b"), from swiftlike's registry (the model cards'
    config.json)."""
    from swiftlike.registry import find_model

    return {k: v for k, v in find_model(QWEN3_SHAPES[shape]).config.items() if k != "torch_dtype"}


def build_config_model_dir(path: Path, config: dict, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """A randomly initialised Qwen3 of this config (initialised on the GPU when there is one), saved in `dtype`
    with the real Qwen3 tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if (path / "config.json").is_file():
        return path
    cfg = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM._from_config(Qwen3Config(**cfg), dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path


def clock_calls(owner, name: str) -> list[float]:
    """Wrap `owner.name` (a method or function attribute) so that each call appends to the returned list the
    seconds it took, the GPU's queued work included (CUDA is synchronized at both ends)."""
    import torch

    times: list[float] = []
    original = getattr(owner, name)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed(*a, **k):
        sync()
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            sync()
            times.append(time.perf_counter() - t)

    setattr(owner, name, timed)
    return times


def trl_step_ends(trainer) -> list[float]:
    """Times at which a transformers Trainer's optimizer steps end (after the GPU's work), recorded by a callback."""
    import torch
    from transformers import TrainerCallback

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    trainer.add_callback(StepEnds())
    return ends


def ours_step_ends() -> list[float]:
    """Times at which swiftlike's optimizer steps end (Trainer.train_step, after the GPU's work)."""
    import torch

    from swiftlike.train import trainer as T

    ends: list[float] = []
    original = T.Trainer.train_step

    def timed(self, micro_batches):
        out = original(self, micro_batches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
        return out

    T.Trainer.train_step = timed
    return ends


def steady(ends: list[float], warmup: int = 1) -> float | None:
    """Seconds per step after the first `warmup` steps (kernel compilation, autotuning, allocator growth: one-time
    costs that dominate a short GPU run), from the steps' end times; None when too few steps ran."""
    warmup = max(1, warmup)
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup) if len(ends) > warmup else None


def gpu_peak_gib() -> dict:
    """This process's peak GPU memory (torch's allocator) in GiB; empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30}


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(1, n_words))]
    out, i = [], 0
    while i < len(words):
        k = rng.randint(6, 16)
        chunk = words[i:i + k]
        out.append(chunk[0].capitalize() + " " + " ".join(chunk[1:]) + ".")
        i += k
    return " ".join(out)


def chat_rows(n: int = 2000, seed: int = 0, mean_tokens: float = 115, max_tokens: int = 850) -> list[dict]:
    """Chat rows with lognormal response lengths (long tail), ~1.25 tokens per word."""
    rng = random.Random(seed)
    sigma = 0.9
    mu = math.log(mean_tokens) - sigma ** 2 / 2
    rows = []
    for _ in range(n):
        tokens = min(max_tokens, max(4, int(rng.lognormvariate(mu, sigma))))
        prompt = _sentence(rng, rng.randint(8, 30)).rstrip(".") + "?"
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": _sentence(rng, int(tokens / 1.25))}]})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate in FLOP/s (best of `repeats`)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM where /proc has it (Linux), else ru_maxrss. (ru_maxrss is
    carried over fork and exec on Linux, so a child started by a large parent would report the parent's RSS.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preference_rows(n: int = 2000, seed: int = 0, mean_tokens: float = 115, max_tokens: int = 850) -> list[dict]:
    """Conversational preference pairs: a prompt and two answers with independent lognormal lengths."""
    rng = random.Random(seed)
    sigma = 0.9
    mu = math.log(mean_tokens) - sigma ** 2 / 2

    def answer():
        tokens = min(max_tokens, max(4, int(rng.lognormvariate(mu, sigma))))
        return [{"role": "assistant", "content": _sentence(rng, int(tokens / 1.25))}]

    return [{"prompt": [{"role": "user", "content": _sentence(rng, rng.randint(8, 30)).rstrip(".") + "?"}],
             "chosen": answer(), "rejected": answer()} for _ in range(n)]


def peer_lora():
    """The LoRA settings both sides use (swiftlike's defaults), as a PEFT config for the TRL side."""
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


def msswift_flags(model_dir: str, steps: int, out: str) -> list[str]:
    """The ms-swift flags every side's run shares: the miniature Qwen3 with its template, `peer_lora`'s LoRA, one
    micro-batch a step (its default accumulates to a global batch of 16), no checkpoints, checkpointing or loader
    workers, the CPU unless there is a GPU."""
    import torch

    return ["--model", model_dir, "--model_type", "qwen3", "--template", "qwen3", "--tuner_type", "lora",
            "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0.05", "--target_modules", "all-linear",
            "--max_steps", str(steps), "--gradient_accumulation_steps", "1", "--output_dir", out,
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", str(steps), "--seed", "42",
            "--gradient_checkpointing", "false", "--dataloader_num_workers", "0",
            "--use_cpu", str(not torch.cuda.is_available()).lower()]


def add_child_args(parser) -> None:
    """The hidden flags a benchmark passes to its own child processes (one per side), and --msswift_python."""
    import argparse

    parser.add_argument("--child", choices=("ours", "trl", "msswift"), help=argparse.SUPPRESS)
    parser.add_argument("--msswift_python", default=os.environ.get("WB_MSSWIFT_PYTHON"),
                        help="the Python of an environment with ms-swift installed, for its side (ms-swift pins its "
                             "own transformers, peft and trl: give it a virtual environment); default "
                             "$WB_MSSWIFT_PYTHON, else this Python when it has ms-swift, else that side is left out")
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)


def msswift_python(given: str | None) -> str | None:
    """The interpreter that runs ms-swift's side: `given` (checked), else this one when it has ms-swift, else None."""
    import subprocess
    import sys

    python = given or sys.executable
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('swift.pipelines') is None)"
    try:
        found = subprocess.run([python, "-c", check], capture_output=True).returncode == 0
    except OSError:
        found = False
    if given and not found:
        sys.exit(f"--msswift_python {given}: that Python cannot import ms-swift (pip install ms-swift there)")
    return python if found else None


def with_msswift(sides: list[str], given: str | None) -> tuple[list[str], str | None]:
    """`sides` with ms-swift's added when an interpreter with it is found (said either way)."""
    python = msswift_python(given)
    if python is None:
        print("ms-swift: not installed here, its side left out (python -m venv --system-site-packages ENV && "
              "ENV/bin/pip install ms-swift; then --msswift_python ENV/bin/python)", flush=True)
        return sides, None
    import subprocess

    versions = subprocess.run([python, "-c", "import swift, transformers; print(swift.__version__, "
                               "transformers.__version__)"], capture_output=True, text=True).stdout.split()[-2:]
    print(f"ms-swift {versions[0]} (transformers {versions[1]}) from {python}", flush=True)
    return [*sides, "msswift"], python


def msswift_train(entry: str, argv: list[str]) -> dict:
    """Run ms-swift's `entry` pipeline ("sft_main", "rlhf_main") on `argv` (its command-line flags) in this process.
    Returns the trainer, the seconds spent in its train(), the steps' end times (after the GPU's work) and the
    non-padding input tokens it counted."""
    import swift
    import transformers

    runs: list[dict] = []
    init, train = transformers.Trainer.__init__, transformers.Trainer.train

    @functools.wraps(init)  # (ms-swift reads the signature)
    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.args.include_num_input_tokens_seen = "non_padding"  # (its command line takes only true/false)
        runs.append({"trainer": self, "ends": trl_step_ends(self)})

    @functools.wraps(train)
    def timed_train(self, *args, **kwargs):
        start = time.perf_counter()
        out = train(self, *args, **kwargs)
        runs[-1]["train_seconds"] = time.perf_counter() - start
        return out

    transformers.Trainer.__init__, transformers.Trainer.train = recording_init, timed_train
    try:
        getattr(swift, entry)(argv)
    finally:
        transformers.Trainer.__init__, transformers.Trainer.train = init, train
    run = runs[-1]
    return {**run, "tokens": int(run["trainer"].state.num_input_tokens_seen)}


def run_sides(script: str, sides: list[str], repeats: int, child_args, note=None,
              python: dict | None = None) -> dict[str, list]:
    """Run each side's child (`child_args(side)`: its arguments) `repeats` times, the sides alternating (drift in
    the machine hits both), printing each run; `note(result)` may add fields to a result and returns the text that
    ends its line."""
    results: dict[str, list] = {s: [] for s in sides}
    for r in range(repeats):
        for side in sides:
            res = run_child(script, ["--child", side, *child_args(side)], (python or {}).get(side))
            extra = note(res) if note else ""
            results[side].append(res)
            print(f"[{side} #{r + 1}] {res['tokens_per_second']:.1f} tok/s, peak RSS {res['peak_rss_mb']:.0f} MB, "
                  f"train {res['train_seconds']:.1f}s, wall {res['wall_seconds']:.1f}s{extra}", flush=True)
    return results


def run_child(script: str, args: list[str], python: str | None = None) -> dict:
    """Run `script --child ...` in its own process (its peak RSS is its own), with `python` (default: this one), and
    return its RESULT line. The child's output passes through as it comes (a run stopped by a time limit still shows
    how far it got)."""
    import subprocess
    import sys

    with subprocess.Popen([python or sys.executable, script, *args], stdout=subprocess.PIPE, text=True) as proc:
        line = None
        for text in proc.stdout:
            if text.startswith("RESULT "):
                line = text
            else:
                print(text, end="", flush=True)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{' '.join(args[:2])} failed (exit {proc.returncode}; its output is above)")
    return json.loads(line[7:])
