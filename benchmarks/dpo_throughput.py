"""DPO throughput: `wb dpo` vs TRL's DPOTrainer on the same miniature Qwen3, preference pairs and LoRA settings.

    python benchmarks/dpo_throughput.py [--steps 20] [--batch 4] [--rows 2000]
    python benchmarks/dpo_throughput.py --model_shape 0.6b --dtype bfloat16   # on a GPU: Qwen3-0.6B's real shape
    python benchmarks/dpo_throughput.py --msswift_python ENV/bin/python      # and ms-swift's `swift rlhf` beside

Each side in its own process (peak RSS is its own); reported: trained pairs per second in the training loop,
peak RSS, and the ratios. Both: LoRA r=8/alpha 32/dropout 0.05 on all linear layers, sigmoid DPO, beta 0.1,
fp32 (or --dtype), max_length 1024, reference = the adapter-disabled model, on the GPU when there is one (both
sides; peak GPU memory is then reported too). --model_shape 0.6b / 4b: a randomly initialised model of that Qwen3's
real config instead of the miniature. Needs `pip install -e ".[bench]"`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_child_args, build_config_model_dir, build_model_dir, gpu_peak_gib,  # noqa: E402
                    msswift_flags, msswift_train, ours_step_ends, peak_rss_mb, peer_lora, preference_rows,
                    qwen3_shape_config, run_child, scratch_dir, steady, trl_step_ends, with_msswift, write_jsonl)


def run_ours(model_dir: str, data: str, steps: int, batch: int, out: str, dtype: str = "float32") -> dict:
    import swiftlike as wb

    ends = ours_step_ends()
    result = wb.dpo(model=model_dir, template="qwen3", dataset=[data], lora=True, max_steps=steps,
                    per_device_train_batch_size=batch, learning_rate=5e-5, max_length=1024, torch_dtype=dtype,
                    logging_steps=steps, save_steps=10 ** 9, output_dir=out, dataset_cache=False)
    return {"pairs": result.metrics["trained_pairs"], "train_seconds": result.metrics["train_seconds"],
            "steady_step_seconds": steady(ends)}


def run_trl(model_dir: str, data: str, steps: int, batch: int, out: str, dtype: str = "float32") -> dict:
    import torch
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=5e-5,
                     max_length=1024, logging_steps=steps, save_strategy="no", report_to="none",
                     use_cpu=not torch.cuda.is_available(), bf16=dtype == "bfloat16", fp16=False, beta=0.1, seed=42,
                     model_init_kwargs={"dtype": dtype},
                     gradient_checkpointing=False)  # TRL's default is on; swiftlike's is off: the same on both
    trainer = DPOTrainer(model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"],
                         peft_config=peer_lora())
    ends = trl_step_ends(trainer)
    t = time.perf_counter()
    trainer.train()
    return {"pairs": steps * batch, "train_seconds": time.perf_counter() - t, "steady_step_seconds": steady(ends)}


def run_msswift(model_dir: str, data: str, steps: int, batch: int, out: str, dtype: str = "float32") -> dict:
    """ms-swift's `swift rlhf --rlhf_type dpo`, the same pairs in its own format (messages + rejected_response)."""
    pairs = Path(out) / "pairs.jsonl"
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    write_jsonl([{"messages": r["prompt"] + r["chosen"], "rejected_response": r["rejected"][-1]["content"]}
                 for r in rows], pairs)
    run = msswift_train("rlhf_main", [
        *msswift_flags(model_dir, steps, str(Path(out) / "run")), "--rlhf_type", "dpo", "--beta", "0.1",
        "--loss_type", "sigmoid", "--dataset", str(pairs), "--per_device_train_batch_size", str(batch),
        "--learning_rate", "5e-5", "--max_length", "1024", "--torch_dtype", dtype])
    return {"pairs": steps * batch, "train_seconds": run["train_seconds"], "steady_step_seconds": steady(run["ends"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--model_shape", choices=("mini", "0.6b", "4b"), default="mini",
                    help="mini: hidden 256, 4 layers; 0.6b / 4b: that Qwen3's real config (random weights)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    add_child_args(ap)
    a = ap.parse_args()
    if a.child:
        with tempfile.TemporaryDirectory() as out:
            run = {"ours": run_ours, "trl": run_trl, "msswift": run_msswift}[a.child]
            res = run(a.model_dir, a.data, a.steps, a.batch, out, a.dtype)
        res["pairs_per_second"] = res["pairs"] / res["train_seconds"]
        # after the first step (one-time kernel compilation and autotuning: most of a short GPU run)
        res["steady_pairs_per_second"] = a.batch / res["steady_step_seconds"] if res["steady_step_seconds"] else None
        res["peak_rss_mb"] = peak_rss_mb()
        res.update(gpu_peak_gib())
        print("RESULT " + json.dumps(res))
        return
    work = scratch_dir("wb-dpo-bench-")
    model_dir = str(build_model_dir(work / "model") if a.model_shape == "mini" else
                    build_config_model_dir(work / "model", qwen3_shape_config(a.model_shape), a.dtype))
    data = str(write_jsonl(preference_rows(a.rows), work / "pairs.jsonl"))
    res = {}
    sides, msswift = with_msswift(["ours", "trl"], a.msswift_python)
    for side in sides:
        res[side] = run_child(__file__, ["--child", side, "--model-dir", model_dir, "--data", data,
                                         "--steps", str(a.steps), "--batch", str(a.batch), "--dtype", a.dtype],
                              msswift if side == "msswift" else None)
        gpu = f", peak GPU {res[side]['peak_allocated_gib']:.2f} GiB" if "peak_allocated_gib" in res[side] else ""
        after = res[side]["steady_pairs_per_second"]
        print(f"[{side}] {res[side]['pairs_per_second']:.2f} pairs/s"
              + (f" ({after:.2f} after the first step)" if after else "")
              + f", peak RSS {res[side]['peak_rss_mb']:.0f} MB{gpu}, train {res[side]['train_seconds']:.1f}s",
              flush=True)
    for peer, name in (("trl", "TRL"), ("msswift", "ms-swift")):
        if peer not in res:
            continue
        ours, theirs = res["ours"], res[peer]
        o, t = ours["steady_pairs_per_second"], theirs["steady_pairs_per_second"]
        print(f"ratio ours/{name}: throughput {ours['pairs_per_second'] / theirs['pairs_per_second']:.2f}x"
              + (f" ({o / t:.2f}x after the first step)" if o and t else "") + ", "
              f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x"
              + (f", peak GPU memory {ours['peak_allocated_gib'] / theirs['peak_allocated_gib']:.2f}x"
                 if "peak_allocated_gib" in theirs else ""))


if __name__ == "__main__":
    main()
