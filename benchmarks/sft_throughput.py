"""SFT throughput: `wb sft` vs TRL's SFTTrainer on the same miniature Qwen3, data and LoRA settings.

    python benchmarks/sft_throughput.py [--steps 30] [--rows 2000] [--repeats 1] [--msswift_python ENV/bin/python]

Each run is a separate process (so peak RSS is its own); runs alternate ours/TRL (/ms-swift, when an environment with
it is given or found: `--msswift_python`). Reported per run:
non-padding tokens processed per second in the training loop, peak RSS, wall time; then the ratios
and model FLOPs utilisation against this machine's fp32 matmul rate measured in the same run.
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
from common import (add_child_args, build_model_dir, chat_rows, matmul_flops, msswift_flags, msswift_train,  # noqa: E402
                    peak_rss_mb, peer_lora, run_sides, scratch_dir, with_msswift, write_jsonl)


def run_ours(model_dir: str, data: str, steps: int, batch: int, out: str) -> dict:
    import swiftlike as wb

    t = time.perf_counter()
    result = wb.sft(model=model_dir, template="qwen3", dataset=[data], lora=True, max_steps=steps,
                    per_device_train_batch_size=batch, learning_rate=1e-4, max_length=1024, torch_dtype="float32",
                    logging_steps=steps, save_steps=10 ** 9, output_dir=out)
    m = result.metrics
    return {"tokens": m["input_tokens"], "train_seconds": m["train_seconds"], "wall_seconds": time.perf_counter() - t}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_trl(model_dir: str, data: str, steps: int, batch: int, out: str) -> dict:
    import trl
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    t = time.perf_counter()
    # the assistant tokens alone are trained, as ours: TRL needs its Qwen3 training template for that (the official
    # one plus {% generation %} markers; the same text for these rows)
    template = Path(trl.__file__).parent / "chat_templates" / "qwen3_training.jinja"
    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                     max_length=1024, logging_steps=1, save_strategy="no", report_to="none", use_cpu=not _cuda(),
                     bf16=False, fp16=False, dataloader_num_workers=0, seed=42, assistant_only_loss=True,
                     chat_template_path=str(template),
                     gradient_checkpointing=False)  # TRL's default is on; swiftlike's is off: the same on both
    trainer = SFTTrainer(model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"],
                         peft_config=peer_lora())
    t_train = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t_train
    tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    return {"tokens": tokens, "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t}


def run_msswift(model_dir: str, data: str, steps: int, batch: int, out: str) -> dict:
    """ms-swift's `swift sft` with the same model, data and settings (its Qwen3 template trains the assistant turns,
    as ours; padded batches: its padding-free mode needs flash-attn)."""
    t = time.perf_counter()
    run = msswift_train("sft_main", [
        *msswift_flags(model_dir, steps, out), "--dataset", data, "--per_device_train_batch_size", str(batch),
        "--learning_rate", "1e-4", "--max_length", "1024", "--torch_dtype", "float32"])
    return {"tokens": run["tokens"], "train_seconds": run["train_seconds"], "wall_seconds": time.perf_counter() - t}


def child(which: str, model_dir: str, data: str, steps: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        res = {"ours": run_ours, "trl": run_trl, "msswift": run_msswift}[which](model_dir, data, steps, batch, out)
    res["tokens_per_second"] = res["tokens"] / res["train_seconds"]
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res))


def flops_per_token(model_dir: str, trained: float) -> float:
    """Forward + backward-to-activations of every matmul weight (LoRA: no weight gradients), 4 FLOPs per weight; the
    output layer's only at the `trained` fraction of tokens (the loss needs logits there alone)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    return 4.0 * (layers * per_layer + trained * h * v)


def trained_fraction(model_dir: str, data: str) -> float:
    """The share of the data's tokens that are trained (assistant turns), as both sides encode them."""
    from swiftlike.data.dataset import encode_rows, load_rows
    from swiftlike.models import load_tokenizer
    from swiftlike.templates import IGNORE_INDEX, get_template

    rows, _ = encode_rows(load_rows([data]), get_template("qwen3", load_tokenizer(model_dir)), 1024)
    labels = [label for row in rows for label in row["labels"]]
    return sum(label != IGNORE_INDEX for label in labels) / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=("ours", "trl", "msswift"), help="run one side only")
    add_child_args(ap)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.model_dir, a.data, a.steps, a.batch)

    work = scratch_dir("wb-bench-")
    model_dir = str(build_model_dir(work / "model"))
    data = str(write_jsonl(chat_rows(a.rows), work / "chat.jsonl"))
    rate = matmul_flops()
    trained = trained_fraction(model_dir, data)
    fpt = flops_per_token(model_dir, trained)
    sides, msswift = with_msswift(["ours", "trl"], a.msswift_python)
    sides = [a.only] if a.only else sides

    def mfu(res: dict) -> str:
        res["mfu"] = fpt * res["tokens_per_second"] / rate
        return f", MFU {100 * res['mfu']:.1f}%"

    args = ["--model-dir", model_dir, "--data", data, "--steps", str(a.steps), "--batch", str(a.batch)]
    results = run_sides(__file__, sides, a.repeats, lambda side: args, mfu, {"msswift": msswift})
    print(f"\nmachine fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s; model FLOPs per token {fpt / 1e6:.1f} MFLOP "
          f"({100 * trained:.1f}% of the tokens trained: the output layer's share; ceiling {rate / fpt:.0f} tok/s)")
    best = {s: max(results[s], key=lambda x: x["tokens_per_second"]) for s in sides}
    for s in sides:
        print(f"{s:5s} best: {best[s]['tokens_per_second']:.1f} tok/s, peak RSS {best[s]['peak_rss_mb']:.0f} MB, "
              f"MFU {100 * best[s]['mfu']:.1f}%")
    for peer, name in (("trl", "TRL"), ("msswift", "ms-swift")):
        if "ours" in best and peer in best:
            print(f"ratio ours/{name}: throughput "
                  f"{best['ours']['tokens_per_second'] / best[peer]['tokens_per_second']:.2f}x, "
                  f"peak RSS {best['ours']['peak_rss_mb'] / best[peer]['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
