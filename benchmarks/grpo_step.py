"""One GRPO step (generation + scoring + update): `wb grpo` vs TRL's GRPOTrainer on the same miniature Qwen3,
prompts, reward function and LoRA settings.

    python benchmarks/grpo_step.py [--steps 6] [--prompts 8] [--generations 4] [--new-tokens 32]
    python benchmarks/grpo_step.py --model_shape 0.6b --dtype bfloat16   # on a GPU: Qwen3-0.6B's real shape

Each side runs in its own process. Both: LoRA r=8/alpha 32/dropout 0.05 on all linear layers, the `grpo` loss,
beta 0 (no reference model), one iteration per generation batch, temperature 1, fp32, transformers generation,
on the GPU when there is one (both sides). The random miniature almost never samples its end-of-turn token, so
completions run to --new-tokens on both sides (the mean length is printed to show it). Reported: seconds per
step, split into generation and the rest (scoring and training), peak GPU memory on a GPU, and the ratios.
--model_shape 0.6b / 4b: a randomly initialised model of that Qwen3's real config instead of the miniature;
--dtype bfloat16 for both sides. --static_cache true|false: our rollout's KV cache (default: static, its decode step
captured once as a CUDA graph and replayed, on CUDA; a growing one elsewhere); --decode cudagraphs|inductor: reach
CUDA graphs through torch.compile instead of the default capture (`graph`): its "cudagraphs" backend, or inductor's
mode="reduce-overhead" (fused kernels, a much longer first step); --sides ours,trl: which sides run. Reported with
ours: the static cache's captures, replays and eager steps, and torch.compile's counts (graphs, breaks, skipped
recordings, and the inputs its CUDA graphs copy at every replay). --sides ours,trl,msswift with --msswift_python
ENV/bin/python (an environment with ms-swift): ms-swift's GRPO beside.
Needs `pip install -e ".[bench]"`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_child_args, build_config_model_dir, build_model_dir, clock_calls, gpu_peak_gib,  # noqa: E402
                    msswift_flags, msswift_python, msswift_train, ours_step_ends, peak_rss_mb, peer_lora,
                    qwen3_shape_config, run_child, scratch_dir, steady, trl_step_ends, write_jsonl)


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def reward_len(completions, **_):
    """A cheap, deterministic reward that differs between completions."""
    return [float(len(_text(c)) % 7) for c in completions]


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} + {2 * i + 1}? Put the final answer after ####."}]}
            for i in range(n)]


DECODES = {"graph": "graph", "cudagraphs": dict(backend="cudagraphs", dynamic=False),
           "inductor": dict(mode="reduce-overhead", dynamic=False)}


def run_ours(model_dir, data, steps, prompts, gens, new_tokens, out, dtype="float32", static_cache=None,
             decode="graph") -> dict:
    import swiftlike as wb
    from swiftlike.rollout import hf

    hf.CUDA_DECODE = DECODES[decode]

    generations, ends = clock_calls(hf.HFRollout, "generate"), ours_step_ends()
    result = wb.grpo(model=model_dir, template="qwen3", dataset=[data], lora=True, lora_dropout=0.05,
                     reward_funcs=[reward_len], num_generations=gens, per_device_train_batch_size=prompts * gens,
                     max_completion_length=new_tokens, max_steps=steps, learning_rate=1e-5, torch_dtype=dtype,
                     logging_steps=steps, save_steps=10 ** 9, log_completions=False, output_dir=out,
                     static_cache=static_cache)
    lengths = [h["completions/mean_length"] for h in result.log_history if "completions/mean_length" in h]
    return dict(timings(result.metrics["train_seconds"], generations, ends), mean_length=lengths[-1],
                compiled=compile_counts())


def compile_counts() -> dict:
    """How the static cache's decode steps ran in this process: captured as CUDA graphs, replayed, eager
    (infer/static_cache.COUNTS); through torch.compile: frames and graphs compiled (one decode step should be one
    graph), graph breaks, graphs run without recording CUDA graphs, and the inputs its recordings copy at every
    replay (the weights and the cache, with the "cudagraphs" backend)."""
    from torch._dynamo.utils import counters

    from swiftlike.infer.static_cache import COUNTS

    return {**COUNTS, "frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
            "cudagraph_copied_inputs": counters["inductor"]["cudagraph_recorded_non_static_inputs"]}


def timings(seconds: float, generations: list[float], ends: list[float]) -> dict:
    """All steps, and after the first (one-time kernel compilation and autotuning: most of a short GPU run)."""
    after = generations[1:]
    return {"seconds": seconds, "generate_seconds": sum(generations), "steady_step_seconds": steady(ends),
            "steady_generate_seconds": sum(after) / len(after) if after else None}


def run_trl(model_dir, data, steps, prompts, gens, new_tokens, out, dtype="float32", static_cache=None,
            decode=None) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = GRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=prompts * gens,
                      num_generations=gens, max_completion_length=new_tokens, learning_rate=1e-5, beta=0.0,
                      loss_type="grpo", temperature=1.0, logging_steps=steps, save_strategy="no", report_to="none",
                      use_cpu=not torch.cuda.is_available(), bf16=dtype == "bfloat16", fp16=False, seed=42,
                      log_completions=False,
                      gradient_checkpointing=False)  # TRL's default is on; swiftlike's is off: the same on both
    trainer = GRPOTrainer(model=model, reward_funcs=reward_len, args=args, processing_class=tokenizer,
                          train_dataset=load_dataset("json", data_files=data)["train"], peft_config=peer_lora())
    generations, ends = clock_calls(trainer, "_generate"), trl_step_ends(trainer)
    t = time.perf_counter()
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return dict(timings(time.perf_counter() - t, generations, ends), mean_length=lengths[-1])


def run_msswift(model_dir, data, steps, prompts, gens, new_tokens, out, dtype="float32", static_cache=None,
                decode=None) -> dict:
    """ms-swift's `swift rlhf --rlhf_type grpo`: the same reward (registered as one of its ORMs), settings and
    prompts; generation with its transformers engine (vLLM is not used on either side)."""
    from swift.rewards import ORM, orms
    from swift.rlhf_trainers.grpo_trainer import GRPOTrainer

    class RewardLen(ORM):
        def __call__(self, completions, **kwargs):
            return reward_len(completions)

    orms["wb_len"] = RewardLen
    messages = Path(out) / "prompts.jsonl"  # its own format: the prompt as `messages`
    write_jsonl([{"messages": json.loads(line)["prompt"]} for line in Path(data).read_text().splitlines()], messages)
    generations = clock_calls(GRPOTrainer, "_generate_completions")
    run = msswift_train("rlhf_main", [
        *msswift_flags(model_dir, steps, str(Path(out) / "run")), "--rlhf_type", "grpo", "--dataset", str(messages),
        "--reward_funcs", "wb_len", "--num_generations", str(gens), "--per_device_train_batch_size", str(prompts * gens),
        "--max_completion_length", str(new_tokens), "--learning_rate", "1e-5", "--beta", "0", "--loss_type", "grpo",
        "--temperature", "1.0", "--torch_dtype", dtype, "--log_completions", "false", "--use_vllm", "false"])
    history = run["trainer"].state.log_history
    lengths = [h[k] for h in history for k in ("completions/mean_length", "completions/mean_len") if k in h]
    return dict(timings(run["train_seconds"], generations, run["ends"]), mean_length=lengths[-1] if lengths else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--model_shape", choices=("mini", "0.6b", "4b"), default="mini",
                    help="mini: hidden 256, 4 layers; 0.6b / 4b: that Qwen3's real config (random weights)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--static_cache", choices=("auto", "true", "false"), default="auto")
    ap.add_argument("--decode", choices=tuple(DECODES), default="graph")
    ap.add_argument("--sides", default="ours,trl")
    add_child_args(ap)
    a = ap.parse_args()
    shape = [str(a.steps), str(a.prompts), str(a.generations), str(a.new_tokens)]
    if a.child:
        with tempfile.TemporaryDirectory() as out:
            run = {"ours": run_ours, "trl": run_trl, "msswift": run_msswift}[a.child]
            res = run(a.model_dir, a.data, a.steps, a.prompts, a.generations, a.new_tokens, out, a.dtype,
                      {"true": True, "false": False}.get(a.static_cache), a.decode)
        res["peak_rss_mb"] = peak_rss_mb()
        res.update(gpu_peak_gib())
        print("RESULT " + json.dumps(res))
        return
    work = scratch_dir("wb-grpo-bench-")
    model_dir = str(build_model_dir(work / "model") if a.model_shape == "mini" else
                    build_config_model_dir(work / "model", qwen3_shape_config(a.model_shape), a.dtype))
    data = str(write_jsonl(prompt_rows(max(64, a.prompts * a.steps)), work / "prompts.jsonl"))
    res = {}
    sides = a.sides.split(",")
    msswift = msswift_python(a.msswift_python) if "msswift" in sides else None
    if "msswift" in sides and msswift is None:
        sys.exit("--sides msswift: this Python has no ms-swift; give --msswift_python ENV/bin/python")
    for side in sides:
        r = run_child(__file__, ["--child", side, "--model-dir", model_dir, "--data", data, "--steps", shape[0],
                                 "--prompts", shape[1], "--generations", shape[2], "--new-tokens", shape[3],
                                 "--dtype", a.dtype, "--static_cache", a.static_cache,
                                 "--decode", a.decode], msswift if side == "msswift" else None)
        r["per_step"] = r["seconds"] / a.steps
        r["generate_per_step"] = r["generate_seconds"] / a.steps
        r["rest_per_step"] = r["per_step"] - r["generate_per_step"]
        if r["steady_step_seconds"] and r["steady_generate_seconds"] is not None:
            r["steady_rest_seconds"] = r["steady_step_seconds"] - r["steady_generate_seconds"]
        res[side] = r
        print(f"[{side}] {r['per_step']:.2f} s/step (generation {r['generate_per_step']:.2f} s, scoring + training "
              f"{r['rest_per_step']:.2f} s)" + (
                  f"; after the first step {r['steady_step_seconds']:.2f} s/step (generation "
                  f"{r['steady_generate_seconds']:.2f} s)" if "steady_rest_seconds" in r else "")
              + f", completions of {r['mean_length']:.0f} tokens, peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f", peak GPU {r['peak_allocated_gib']:.2f} GiB" if "peak_allocated_gib" in r else "")
              + (f"; decode steps: {r['compiled']}" if r.get("compiled") else ""), flush=True)
    for peer, name in (("trl", "TRL"), ("msswift", "ms-swift")):
        if "ours" not in res or peer not in res:
            continue
        o, t = res["ours"], res[peer]
        print(f"speed-up ours vs {name}: step {t['per_step'] / o['per_step']:.2f}x, generation "
              f"{t['generate_per_step'] / o['generate_per_step']:.2f}x, scoring + training "
              f"{t['rest_per_step'] / o['rest_per_step']:.2f}x; peak RSS {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
        if "steady_rest_seconds" in o and "steady_rest_seconds" in t:
            print(f"  after the first step: step {t['steady_step_seconds'] / o['steady_step_seconds']:.2f}x, "
                  f"generation {t['steady_generate_seconds'] / o['steady_generate_seconds']:.2f}x, scoring + training "
                  f"{t['steady_rest_seconds'] / o['steady_rest_seconds']:.2f}x")


if __name__ == "__main__":
    main()
